"""The core's training loop: stages from a recipe, checkpoints that resume after any stop.

A checkpoint is a safetensors file (weights, EMA, optimiser moments) beside a JSON file (recipe
digest, stage, samples seen, optimiser step): no pickle anywhere. The data of batch k of a stage
is a pure function of (seed, stage, k), so a resumed run sees exactly the data it would have.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..isp import demosaic, srgb_encode
from ..models.core import CoreModel, latent_from_packed, model_inputs, stabilised
from ..restore import sample_restored, save_core
from ..schedulers.irsde import IRSDEScheduler
from .recipe import Recipe, Stage
from .synthesis import PhotoPool, RawBatch, RawSynthesizer

CHECKPOINT_SECONDS = 600


def display(rgb: torch.Tensor, batch: RawBatch) -> torch.Tensor:
    """White-balanced camera RGB -> the photo's sRGB (exposure, matrix, sRGB curve; no tone)."""
    linear = torch.einsum("bij,bjhw->bihw", batch.srgb_from_cam, rgb * batch.gain.view(-1, 1, 1, 1))
    return srgb_encode(linear.clamp(0, 1))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of each image's PSNR, peak 1."""
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-12)
    return float((-10 * torch.log10(mse)).mean())


def scheduler_of(recipe: Recipe) -> IRSDEScheduler:
    return IRSDEScheduler(t_start=recipe.sde_t_start, lam=recipe.sde_lambda)


def restore(model: CoreModel, scheduler: IRSDEScheduler, batch: RawBatch, steps: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The restored latent of a batch by ``steps`` IR-SDE steps (1, or no generator: deterministic)."""
    mu, std = model_inputs(batch.noisy, batch.noise, batch.wb, model.config)
    noises = None
    if steps > 1 and generator is not None:
        noises = [torch.randn(mu.shape, generator=generator) for _ in range(steps)]

    def restorer(x_t: torch.Tensor, start: float, t: torch.Tensor) -> torch.Tensor:
        return model.restorer(x_t, mu, std, torch.full((mu.shape[0],), start), t.expand(mu.shape[0]))

    return sample_restored(restorer, mu, std, scheduler, steps, noises)


def losses(model: CoreModel, stage: Stage, scheduler: IRSDEScheduler, batch: RawBatch,
           gen: torch.Generator) -> torch.Tensor:
    config = model.config
    if stage.kind == "decoder":
        rgb = model.decoder(latent_from_packed(batch.clean, config))
        return F.l1_loss(stabilised(rgb, config.sqrt_offset), stabilised(batch.target, config.sqrt_offset))
    mu, std = model_inputs(batch.noisy, batch.noise, batch.wb, config)
    x0 = latent_from_packed(batch.clean, config)
    size = mu.shape[0]
    start = torch.rand(size, generator=gen) < stage.start_fraction
    t = torch.randint(1, scheduler.t_start + 1, (size,), generator=gen)
    t = torch.where(start, torch.full_like(t, scheduler.t_start), t)
    mean, var = scheduler.marginal(x0, mu, t, std)
    x_t = mean + var.sqrt() * torch.randn(mu.shape, generator=gen)
    x_t = torch.where(start.view(-1, 1, 1, 1), mu, x_t)
    pred = model.restorer(x_t, mu, std, start.float(), scheduler.time_input(t))
    # L1 in units of the noise std: each ISO weighs alike (a plain L1 is ruled by the loudest).
    return ((pred - x0).abs() / std).mean()


def validate(model: CoreModel, stage: Stage, scheduler: IRSDEScheduler, batches: list[RawBatch]) -> dict[str, float]:
    scores: dict[str, list[float]] = {}
    with torch.no_grad():
        for batch in batches:
            truth = display(batch.target, batch)
            if stage.kind == "decoder":
                rgb = model.decoder(latent_from_packed(batch.clean, model.config))
                rcd = torch.stack([demosaic(F.pixel_shuffle(p[None], 2)[0, 0]) for p in batch.clean])
                scores.setdefault("decoder", []).append(psnr(display(rgb, batch), truth))
                scores.setdefault("rcd", []).append(psnr(display(rcd, batch), truth))
            else:
                noisy = model.decoder(model_inputs(batch.noisy, batch.noise, batch.wb, model.config)[0])
                restored = model.decoder(restore(model, scheduler, batch, 1))
                scores.setdefault("restored", []).append(psnr(display(restored, batch), truth))
                scores.setdefault("unrestored", []).append(psnr(display(noisy, batch), truth))
    return {k: float(np.mean(v)) for k, v in scores.items()}


class Checkpoint:
    """``run_dir/checkpoint.safetensors`` + ``checkpoint.json``, written atomically."""

    def __init__(self, run_dir: Path):
        self.tensors, self.meta = run_dir / "checkpoint.safetensors", run_dir / "checkpoint.json"

    def save(self, model: CoreModel, ema: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None,
             meta: dict) -> None:
        tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        tensors.update({f"ema.{k}": v.clone().contiguous() for k, v in ema.items()})
        params = [p for group in opt.param_groups for p in group["params"]] if opt is not None else []
        for i, p in enumerate(params):
            for key, value in opt.state.get(p, {}).items():  # type: ignore[union-attr]
                if torch.is_tensor(value):
                    tensors[f"opt.{i}.{key}"] = value.clone().contiguous()
        for path, write in ((self.tensors, lambda p: save_file(tensors, str(p))),
                            (self.meta, lambda p: p.write_text(json.dumps(meta, indent=1)))):
            tmp = path.with_suffix(path.suffix + ".tmp")
            write(tmp)
            os.replace(tmp, path)

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        if not (self.tensors.exists() and self.meta.exists()):
            return None
        return load_file(str(self.tensors)), json.loads(self.meta.read_text())


def trained_module(model: CoreModel, stage: Stage) -> torch.nn.Module:
    return model.decoder if stage.kind == "decoder" else model.restorer


def learning_rate(stage: Stage, samples: int) -> float:
    """Linear warm-up, then a cosine to 5 % of the peak, by samples seen."""
    if samples < stage.warmup_samples:
        return stage.lr * max(samples, stage.batch) / stage.warmup_samples
    progress = min(1.0, (samples - stage.warmup_samples) / max(1, stage.samples - stage.warmup_samples))
    return stage.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainingData:
    synth: RawSynthesizer
    val: list[RawBatch]          # fixed validation batches (validation photos)

    @classmethod
    def of(cls, recipe: Recipe, data_root: Path) -> TrainingData:
        roots = [data_root / p for p in recipe.photos]
        camconst = recipe.camconst and (Path(recipe.camconst) if Path(recipe.camconst).is_absolute()
                                        else data_root / recipe.camconst)
        profiles = recipe.darktable_profiles and data_root / recipe.darktable_profiles
        synth = RawSynthesizer(PhotoPool(roots, "train"), camconst, profiles, recipe.synthesis)
        val_synth = RawSynthesizer(PhotoPool(roots, "val"), camconst, profiles, recipe.synthesis)
        val = [val_synth.batch(np.random.default_rng([recipe.seed, 10_000, i]), 8) for i in range(4)]
        return cls(synth, val)


class Stopper:
    """SIGINT/SIGTERM or a time limit ask the loop to checkpoint and stop."""

    def __init__(self, max_seconds: float | None):
        self.requested, self.deadline = False, max_seconds and time.monotonic() + max_seconds
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request)

    def _request(self, _signum: int, _frame: object) -> None:
        self.requested = True

    @property
    def now(self) -> bool:
        return self.requested or bool(self.deadline and time.monotonic() > self.deadline)


def train(recipe: Recipe, data_root: Path, run_dir: Path, say: Callable[[str], None] = print,
          max_seconds: float | None = None) -> CoreModel:
    """Run (or resume) every stage of ``recipe``; returns the model, each finished stage's
    network holding its EMA weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    model = CoreModel(recipe.model)
    data = TrainingData.of(recipe, data_root)
    say(f"recipe {recipe.name} ({recipe.digest}): {len(data.synth.pool.paths)} photos, "
        f"{len(data.synth.camera_names)} cameras, {len(data.synth.darktable)} darktable profiles")
    checkpoint = Checkpoint(run_dir)
    saved = checkpoint.load()
    stage_index, samples = 0, 0
    if saved is not None:
        tensors, meta = saved
        if meta["recipe"] != recipe.digest:
            say(f"warning: the checkpoint was made by recipe {meta['recipe']}, this is {recipe.digest}")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        stage_index, samples = meta["stage"], meta["samples"]
        say(f"resumed at stage {stage_index}, {samples} samples")
    stopper = Stopper(max_seconds)
    while stage_index < len(recipe.stages):
        resume = saved[0] if saved is not None and samples > 0 else None
        if not run_stage(recipe, stage_index, samples, model, data, checkpoint, resume, stopper, say):
            return model
        saved, stage_index, samples = None, stage_index + 1, 0
        checkpoint.save(model, {}, None, {"recipe": recipe.digest, "stage": stage_index, "samples": 0})
    return model


def run_stage(recipe: Recipe, stage_index: int, samples: int, model: CoreModel, data: TrainingData,
              checkpoint: Checkpoint, resume: dict[str, torch.Tensor] | None, stopper: Stopper,
              say: Callable[[str], None]) -> bool:
    """One stage from ``samples`` on; True when it finished (its network then holds its EMA)."""
    stage = recipe.stages[stage_index]
    scheduler = scheduler_of(recipe)
    module = trained_module(model, stage)
    model.requires_grad_(False)
    module.requires_grad_(True)
    opt = torch.optim.AdamW(module.parameters(), lr=stage.lr, weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if resume is not None:
        ema = {k[len("ema."):]: v for k, v in resume.items() if k.startswith("ema.")}
        for i, p in enumerate(module.parameters()):
            if f"opt.{i}.exp_avg" in resume:
                opt.state[p] = {key: resume[f"opt.{i}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq")}
    say(f"stage {stage_index} ({stage.kind}): {samples}/{stage.samples} samples; "
        f"{sum(p.numel() for p in module.parameters())} parameters")
    last_save = last_log = time.monotonic()
    logged_samples, loss_sum, loss_count = samples, 0.0, 0
    while samples < stage.samples:
        k = samples // stage.batch
        rng = np.random.default_rng([recipe.seed, stage_index, k])
        batch = data.synth.batch(rng, stage.batch)
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        for group in opt.param_groups:
            group["lr"] = learning_rate(stage, samples)
        loss = losses(model, stage, scheduler, batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        # EMA with a warm-up (decay (1 + k) / (10 + k) until it reaches the recipe's), so that the
        # initial weights do not linger in it for thousands of steps.
        decay = min(stage.ema, (1 + k) / (10 + k))
        with torch.no_grad():
            for name, value in module.state_dict().items():
                ema[name].lerp_(value, 1 - decay) if value.is_floating_point() else ema[name].copy_(value)
        samples += stage.batch
        loss_sum, loss_count = loss_sum + float(loss.detach()), loss_count + 1
        now = time.monotonic()
        if now - last_log > 60:
            rate = (samples - logged_samples) / (now - last_log)
            say(f"stage {stage_index} samples {samples} loss {loss_sum / loss_count:.5f} {rate:.2f} samples/s "
                f"lr {learning_rate(stage, samples):.2e}")
            last_log, logged_samples, loss_sum, loss_count = now, samples, 0.0, 0
        if now - last_save > CHECKPOINT_SECONDS or stopper.now:
            checkpoint.save(model, ema, opt, {"recipe": recipe.digest, "stage": stage_index, "samples": samples})
            last_save = now
            scores = _with_ema(module, ema, lambda: validate(model, stage, scheduler, data.val[:2]))
            say(f"checkpoint at {samples}: " + ", ".join(f"{k} {v:.2f} dB" for k, v in scores.items()))
        if stopper.now:
            say("stopped; the same command resumes")
            return False
    module.load_state_dict(ema)
    scores = validate(model, stage, scheduler, data.val)
    say(f"stage {stage_index} done: " + ", ".join(f"{k} {v:.2f} dB" for k, v in scores.items()))
    return True


def _with_ema(module: torch.nn.Module, ema: dict[str, torch.Tensor],
              fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``fn()`` evaluated with the EMA weights in ``module``, the live weights restored after."""
    live = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(ema)
    try:
        return fn()
    finally:
        module.load_state_dict(live)


def export(recipe: Recipe, run_dir: Path, path: Path, info: dict[str, str]) -> Path:
    """The run's weights as a shipped core weights file: the EMA of the stage in progress, the
    finished stages' weights as they ended."""
    state = Checkpoint(run_dir).load()
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    tensors, meta = state
    model = CoreModel(recipe.model)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if meta["stage"] < len(recipe.stages) and meta["samples"] > 0:
        trained_module(model, recipe.stages[meta["stage"]]).load_state_dict(
            {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    return save_core(model, scheduler_of(recipe), path, {"recipe": recipe.name, "recipe_digest": recipe.digest,
                                                         "stage": str(meta["stage"]), "samples": str(meta["samples"]),
                                                         **info})
