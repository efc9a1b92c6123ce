"""python -m rawrestore.training --recipe recipes/NAME.toml [--data DIR] [--run DIR]"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .loop import export, train
from .recipe import Recipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rawrestore.training", description=__doc__)
    parser.add_argument("--recipe", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="data root (photos, profiles)")
    parser.add_argument("--run", type=Path, default=None, help="run folder (default runs/RECIPE-NAME)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--export", type=Path, default=None,
                        help="write the run's current weights to this .safetensors file and exit")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe.load(args.recipe)
    run_dir = args.run or Path("runs") / recipe.name
    if args.export:
        print(export(recipe, run_dir, args.export, {}))
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "train.log").open("a")

    def say(message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, file=log, flush=True)
        print(line, file=sys.stderr, flush=True)

    train(recipe, args.data, run_dir, say, max_seconds=args.max_minutes and 60 * args.max_minutes)


if __name__ == "__main__":
    main()
