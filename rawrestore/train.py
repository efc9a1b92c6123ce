"""Train the RVAE and the latent denoiser jointly on synthetic RAW (on the CPU, or a GPU).

    python -m rawrestore.train --data ../shared/data/srgb --out runs/v1 --minutes 90

Each step: encode the clean and the noisy RAW (RVAE), draw a step count N from the offered ones
and a time on that N-step grid (the start state is the DTDM one, mu + noise; later times are the
SDE marginal around the clean latent), predict x0, decode it with the colour condition and
the classical render's detail.
Loss = L1(decoded x0, target) (or, with ``--objective relative``, its per-sample relative form)
+ L1(decoded clean latent, target) + 0.1 L1(x0, clean latent) + a small KL term (+ with
``--network-loss W``, W x the relative L1 of the decoder's own render on 4x4 means). Checkpoints
every few minutes and on Ctrl-C or SIGINT (resume by running the same command again), EMA
weights, a log file, and a validation PSNR (2-step sampler, on the inference distribution) every
``--val-every`` steps. ``--device cuda`` trains on a GPU; the data is still synthesised on the
CPU, by ``--workers`` processes.

A second, short stage calibrates the decoder's classical share, everything else frozen:
``--calibrate-share 1000 --init WEIGHTS`` (see :func:`calibrate_share`). ``--prune 0.5 --init
WEIGHTS`` starts a run from those weights with half the ResBlocks' inner channels (see
:func:`prune_inner`): fewer operations at inference, the same interfaces. ``--widen 32 --init
WEIGHTS`` adds the decoder's wide RAW block (inner width 32) to weights without one, ``--widen-half
16 --init WEIGHTS`` widens the decoder's ResBlocks at H/2 to inner width 16; the new channels start
as no-ops, so the run starts from exactly those weights' output.

A degraded condition (the default, as v1-v3 were trained) makes the model take only colour from
it, but it also breaks what inference guarantees, that the condition plus the detail input is
the classical render; ``--condition sharp`` keeps that and still trains the looks.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate as collate

from .dataset import SyntheticRAWDataset
from .models import RVAE, LatentDenoiser
from .models.blocks import ResBlock
from .schedulers import IRSDEScheduler, sample
from .pipeline import STEP_CHOICES, develop_latent, keep_freed_memory
from .weights import (ModelBundle, WeightsError, bundle_from_config, checked_config, read_weights, refuse_pickle,
                      save_bundle, with_current_bands)

WIDE_LR_SCALE = 5.0  # see main()

# Dataset options per --condition.
CONDITIONS = {
    "degraded": {},
    "sharp": {"degrade_condition": False},
    "clean": {"restyle_probability": 0.0, "degrade_condition": False},
}


def relative_l1(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 with every sample's gradient scaled by the batch's mean L1 over its own (held fixed).

    Its gradient is that of mean L1 x mean log L1: each sample counts by its relative error, as a
    per-image PSNR does, where a plain batch L1 lets the noisiest samples, whose errors are
    largest, decide what the network learns. Its value is the batch L1, for the log.
    """
    per_sample = (out - target).abs().mean(dim=(1, 2, 3))
    held = per_sample.detach().clamp_min(1e-6)
    return (per_sample / held).mean() * held.mean()


def training_state(bundle: ModelBundle, batch: dict, gen: torch.Generator, objective: str = "l1") -> dict:
    """One forward pass of the joint objective; returns the losses."""
    rvae, denoiser, sched = bundle.rvae, bundle.denoiser, bundle.scheduler
    device = batch["input"].device
    # Random draws from ``gen`` (on the CPU), moved to the batch's device: the same run on any device.
    mean_c, logvar_c = rvae.encode(batch["clean_input"], batch["clean_std"])
    z_clean = mean_c + torch.exp(0.5 * logvar_c) * torch.randn(mean_c.shape, generator=gen).to(device)
    mu, _ = rvae.encode(batch["input"], batch["noise_std"])
    B = mu.shape[0]
    steps = torch.tensor([STEP_CHOICES[i] for i in torch.randint(len(STEP_CHOICES), (B,), generator=gen)])
    k = (torch.rand(B, generator=gen) * steps).long() + 1                 # k-th of N grid points, 1..N
    t = torch.round(sched.t_start * k.float() / steps.float()).long()
    is_start = (k == steps).to(device)
    x0 = mean_c.detach()
    m_t, v_t = sched.marginal(x0, mu, t)
    eps = torch.randn(mu.shape, generator=gen).to(device)
    x_t = m_t + v_t.sqrt() * eps
    # DTDM start: mu plus the SDE's noise at t_start; one-step sampling uses mu itself.
    start_noise = torch.where((steps == 1).to(device).view(-1, 1, 1, 1), torch.zeros_like(eps), eps)
    x_start = sched.start_state(mu, start_noise)
    x_t = torch.where(is_start.view(-1, 1, 1, 1), x_start, x_t)
    noise_lat = F.avg_pool2d(batch["noise_std"], 2)
    x0_hat = denoiser(x_t, mu, batch["color"], noise_lat, sched.time_input(t).to(device))
    decoder = rvae.decoder
    network, classical = decoder.render(x0_hat, batch["color"], batch["input"], batch["noise_std"], batch["detail"])
    out = decoder.classical_share(network, classical, batch["input"], batch["noise_std"])
    recon = rvae.decode(z_clean, batch["color"], batch["clean_input"], batch["clean_std"], batch["clean_detail"])
    kl = 0.5 * (mean_c ** 2 + logvar_c.exp() - 1 - logvar_c).mean()
    return {
        "image": (relative_l1(out, batch["target"]) if objective == "relative"
                  else F.l1_loss(out, batch["target"])),
        "recon": F.l1_loss(recon, batch["target"]),
        "latent": F.l1_loss(x0_hat, x0),
        "kl": kl,
        # The network's own render on the latent grid's 4x4 means, before the share: the share
        # takes much of the classical render's coarse band, so through it the network's coarse
        # errors get little gradient (v10: 39 dB on 16x16 means where the classical render has 52).
        "network": relative_l1(F.avg_pool2d(network, 4), F.avg_pool2d(batch["target"], 4)),
    }


def joint_loss(losses: dict, network_weight: float = 0.0) -> torch.Tensor:
    return (losses["image"] + losses["recon"] + 0.1 * losses["latent"] + 1e-5 * losses["kl"]
            + network_weight * losses["network"])


def train_step(bundle: ModelBundle, opt: torch.optim.Optimizer, batch: dict, gen: torch.Generator,
               objective: str = "l1", network_weight: float = 0.0) -> dict:
    """One optimisation step of the joint objective (gradients clipped to norm 1); returns the losses."""
    losses = training_state(bundle, batch, gen, objective)
    opt.zero_grad(set_to_none=True)
    joint_loss(losses, network_weight).backward()
    torch.nn.utils.clip_grad_norm_(bundle.parameters(), 1.0)
    opt.step()
    return losses


def fresh_bundle(config: dict | None = None) -> ModelBundle:
    """Untrained networks in the shape ``config`` (:meth:`ModelBundle.config`) describes, or the
    default shape (checkpoints from before the config was saved in them have that)."""
    return bundle_from_config(config) if config else ModelBundle(RVAE(), LatentDenoiser(), IRSDEScheduler())


CHECKPOINT = "checkpoint.safetensors"


def write_checkpoint(path: Path, bundle: ModelBundle, ema: ModelBundle, opt: torch.optim.Optimizer, step: int,
                     elapsed: float) -> None:
    """A run's state, to resume it: the networks, their EMA and the optimiser's moments as safetensors,
    with the config, the step, the time spent and the optimiser's settings as JSON in its header.
    No pickle: loading one can run any code in it. Written to a temporary and renamed into place."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in bundle.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, param in enumerate(params):
        for key, value in opt.state.get(param, {}).items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    run = {"step": step, "elapsed": elapsed, "param_groups": groups}
    tmp = path.with_name(f"{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"config": json.dumps(bundle.config()), "run": json.dumps(run)})
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict]:
    """A checkpoint's config, its tensors by part ('model', 'ema', 'opt') and its run state."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    refuse_pickle(path)
    try:
        with safe_open(str(path), "pt") as fh:
            header = fh.metadata() or {}
        config, run = json.loads(header["config"]), json.loads(header["run"])
        tensors = load_file(str(path))
    except Exception as err:
        raise WeightsError(f"{path}: not a rawrestore checkpoint ({err})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "opt": {}}
    for key, value in tensors.items():
        part, _, name = key.partition(".")
        parts.setdefault(part, {})[name] = value
    return checked_config(config, path), parts, run


def is_checkpoint(path: str | Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return "run" in (fh.metadata() or {})
    except Exception:
        return False


def load_optimizer(opt: torch.optim.Optimizer, moments: dict[str, torch.Tensor], run: dict) -> None:
    """Restore the optimiser :func:`write_checkpoint` saved (its parameters in the same order)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in moments.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    current = opt.state_dict()["param_groups"]
    opt.load_state_dict({"state": state, "param_groups": [{**saved, "params": group["params"]}
                                                           for saved, group in zip(run["param_groups"], current, strict=True)]})


def load_init(path: str, wide_hidden: int = 0, half_hidden: int = 0) -> tuple[ModelBundle, list[str]]:
    """The networks of a run's checkpoint.safetensors (its EMA) or of a weights .safetensors, in the shape
    they were saved with, or grown: ``wide_hidden`` > 0 adds the decoder's wide RAW block of that
    inner width, ``half_hidden`` > 0 widens the inner width of the decoder's ResBlocks at H/2 to it.
    Returns them and the layers the file lacks (those keep their initialisation, which makes them
    start as no-ops). A grown layer keeps the file's weights in its leading channels; the rest keep
    their initialisation, which for a ResBlock's second convolution is zero, so the new inner
    channels start as no-ops too."""
    refuse_pickle(path)
    if is_checkpoint(path):
        config, parts, _ = read_checkpoint(Path(path))
        weights = with_current_bands(parts["ema"])
    else:  # weights (e.g. rawrestore/weights/)
        config, weights = read_weights(path)
    if wide_hidden:
        config = {**config, "rvae_wide_hidden": wide_hidden}
    if half_hidden:
        config = {**config, "rvae_half_hidden": half_hidden}
    bundle = fresh_bundle(config)
    own = bundle.state_dict()
    for key, value in weights.items():
        if key in own and own[key].shape != value.shape:
            grown = own[key].clone()
            grown[tuple(slice(0, n) for n in value.shape)] = value
            weights[key] = grown
    missing, _ = bundle.load_state_dict(weights, strict=False)
    return bundle, missing


@torch.no_grad()
def prune_inner(bundle: ModelBundle, fraction: float, batches: list[dict]) -> ModelBundle:
    """Structured pruning: every ResBlock keeps ``fraction`` of its inner channels, those that
    matter most on ``batches``, and their weights; the residual streams keep their width.

    A channel's importance is its mean |activation| where the second convolution reads it times
    the norm of that convolution's weights on it: a first-order estimate of how much the block's
    output changes without it. Blocks that share an inner width in the config (the RVAE's two at
    the latent grid, its two at H/2, the denoiser's per level) keep the same count. Fine-tune
    afterwards: the pruned networks start a little below the full ones."""
    blocks = {name: m for name, m in bundle.named_modules() if isinstance(m, ResBlock)}
    activation = {name: 0.0 for name in blocks}

    def hook(name):
        def record(_module, args):
            activation[name] = activation[name] + args[0].abs().mean((0, 2, 3))
        return record

    handles = [b.conv2.register_forward_pre_hook(hook(name)) for name, b in blocks.items()]
    try:
        gen = torch.Generator().manual_seed(0)
        for batch in batches:
            training_state(bundle, batch, gen)
    finally:
        for handle in handles:
            handle.remove()
    config = bundle.config()
    config["rvae_hidden"] = round(config["rvae_hidden"] * fraction)
    config["rvae_half_hidden"] = round(config["rvae_half_hidden"] * fraction)
    config["rvae_wide_hidden"] = round(config["rvae_wide_hidden"] * fraction)
    config["denoiser_hidden"] = [round(h * fraction) for h in config["denoiser_hidden"]]
    pruned = bundle_from_config(config)
    state = bundle.state_dict()
    for name, block in blocks.items():
        count = pruned.get_submodule(name).conv1.out_channels
        importance = activation[name] * torch.linalg.vector_norm(block.conv2.weight, dim=(0, 2, 3))
        keep = importance.topk(count).indices.sort().values
        for key in ("conv1.weight", "conv1.bias"):
            state[f"{name}.{key}"] = state[f"{name}.{key}"][keep]
        state[f"{name}.conv2.weight"] = state[f"{name}.conv2.weight"][:, keep]
        if block.film is not None:  # (scale, shift) per inner channel
            both = torch.cat([keep, keep + block.conv1.out_channels])
            for key in ("film.weight", "film.bias"):
                state[f"{name}.{key}"] = state[f"{name}.{key}"][both]
    pruned.load_state_dict(state)
    return pruned


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


@torch.inference_mode()
def share_inputs(bundle: ModelBundle, dataset: torch.utils.data.Dataset, samples: int,
                 workers: int = 1) -> dict[str, torch.Tensor]:
    """What the classical share sees at inference (default 1 step) on ``samples`` items, with the target.

    The renders are kept in float16 (1.5 MB a 256 px sample), on the networks' device: the networks
    are frozen, so they run once and the share is fitted on this cache."""
    device = next(bundle.parameters()).device
    cache: dict[str, list[torch.Tensor]] = {k: [] for k in ("network", "classical", "x", "noise_std", "target")}

    def keep(_module, args, _output):
        for key, value in zip(("network", "classical", "x", "noise_std"), args):
            cache[key].append(value.half() if key in ("network", "classical") else value.clone())

    hook = bundle.rvae.decoder.classical_share.register_forward_hook(keep)
    try:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(samples)), batch_size=8,
                                             num_workers=workers)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            develop_latent(bundle, batch["input"], batch["noise_std"], batch["color"], batch["detail"], 1)
            cache["target"].append(batch["target"].half())
    finally:
        hook.remove()
    return {k: torch.cat(v) for k, v in cache.items()}


def share_psnr(share: torch.nn.Module, cache: dict[str, torch.Tensor], index: torch.Tensor,
               border: int = 8) -> torch.Tensor:
    """Per-sample PSNR (dB) of the blended output on ``cache[index]``, ``border`` pixels left out."""
    network, classical = cache["network"][index].float(), cache["classical"][index].float()
    out = share(network, classical, cache["x"][index], cache["noise_std"][index]).clamp(0, 1)
    crop = (..., slice(border, -border), slice(border, -border))
    mse = ((out - cache["target"][index].float()) ** 2)[crop].mean((1, 2, 3))
    return -10 * torch.log10(mse.clamp_min(1e-10))


def calibrate_share(share: torch.nn.Module, cache: dict[str, torch.Tensor], iters: int = 300, batch: int = 64,
                    lr: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Fit the classical share to the mean per-sample PSNR, the benchmark's own measure.

    Not to the joint loss (L1 over a batch): that is dominated by the noisiest samples, whose errors
    are largest, and it left the share at a compromise that cost 1.2 dB at ISO 100 (v4).
    """
    opt = torch.optim.Adam(share.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    count = cache["target"].shape[0]
    with torch.enable_grad():
        for _ in range(iters):
            loss = -share_psnr(share, cache, torch.randint(count, (min(batch, count),), generator=gen)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return share


@torch.inference_mode()
def validate(bundle: ModelBundle, val: list[dict], num_steps: int = 2) -> float:
    scores = []
    device = next(bundle.parameters()).device
    for i, item in enumerate(val):
        batch = {k: v[None].to(device) for k, v in item.items()}
        gen = torch.Generator().manual_seed(i)
        noises = [torch.randn((1, bundle.rvae.latent_channels, *batch["color"].shape[-2:]), generator=gen).to(device)
                  for _ in range(num_steps)]
        out = develop_latent(bundle, batch["input"], batch["noise_std"], batch["color"], batch["detail"],
                             num_steps, noises)
        scores.append(psnr(out, batch["target"]))
    return float(np.mean(scores))


@torch.inference_mode()
def latent_headroom(bundle: ModelBundle, val: list[dict]) -> dict[str, tuple[float, float]]:
    """What the latent diffusion adds, and what a perfect one could add: validation PSNR (over all
    samples, over the noisiest quarter) of the decoder given the encoder's latent as it is (no
    diffusion step), the latent after one step, and the clean RAW's own latent, each beside the
    same noisy RAW."""
    device = next(bundle.parameters()).device
    scores: dict[str, list[float]] = {"no step": [], "1 step": [], "clean latent": []}
    noise = []
    for item in val:
        batch = {k: v[None].to(device) for k, v in item.items()}
        beside = (batch["color"], batch["input"], batch["noise_std"], batch["detail"])
        for name, steps in (("no step", 0), ("1 step", 1)):
            out = develop_latent(bundle, batch["input"], batch["noise_std"], batch["color"], batch["detail"], steps)
            scores[name].append(psnr(out, batch["target"]))
        clean = bundle.rvae.encode_mean(batch["clean_input"], batch["clean_std"])
        scores["clean latent"].append(psnr(bundle.rvae.decode(clean, *beside), batch["target"]))
        noise.append(float(batch["noise_std"].mean()))
    noisiest = np.argsort(noise)[-max(1, len(noise) // 4):]
    return {name: (float(np.mean(v)), float(np.mean(np.array(v)[noisiest]))) for name, v in scores.items()}


def format_headroom(headroom: dict[str, tuple[float, float]]) -> str:
    return "; ".join(f"{name} {everything:.2f} dB (noisiest quarter {noisiest:.2f})"
                     for name, (everything, noisiest) in headroom.items())


def share_stage(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """``--calibrate-share``: the --init weights with their share refitted, written to --export."""
    if not (args.init and args.export):
        raise SystemExit("--calibrate-share needs --init (the weights to calibrate) and --export")
    say(f"config {json.dumps(vars(args))}")
    bundle, _ = load_init(args.init)
    bundle.to(torch.device(args.device))
    dataset = SyntheticRAWDataset(args.data, "train", crop=args.crop, seed=args.seed,
                                  darktable_profiles=args.darktable_profiles, **CONDITIONS["clean"])
    cache = share_inputs(bundle, dataset, args.calibrate_share, args.workers)
    held_out = torch.arange(args.calibrate_share * 4 // 5, args.calibrate_share)
    fit = {k: v[:held_out[0]] for k, v in cache.items()}
    share = bundle.rvae.decoder.classical_share
    with torch.no_grad():
        before = share_psnr(share, cache, held_out).mean()
    calibrate_share(share, fit, seed=args.seed)
    with torch.no_grad():
        after = share_psnr(share, cache, held_out).mean()
    say(f"classical share fitted on {len(fit['target'])} samples; held-out PSNR {before:.2f} -> {after:.2f} dB")
    save_bundle(bundle, args.export, {"share_calibrated_on": args.calibrate_share})
    say(f"exported {args.export}")


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except WeightsError as err:  # an --init or checkpoint file refused: one line, not a traceback
        raise SystemExit(f"error: {err}") from None


def _main(argv: list[str] | None) -> None:
    p = argparse.ArgumentParser(prog="rawrestore train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["../shared/data/srgb"], help="folders of clean photos")
    p.add_argument("--darktable-profiles", default="../shared/data/noise_models/darktable_noiseprofiles.json")
    p.add_argument("--out", default="runs/v1")
    p.add_argument("--minutes", type=float, default=90.0, help="wall-time budget (the LR schedule follows it)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the data is synthesised on the CPU)")
    p.add_argument("--workers", type=int, default=1, help="processes synthesising the training data")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-size", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", default=None, help="write the EMA weights to this .safetensors at the end")
    p.add_argument("--init", default=None,
                   help="start a new run from another run's checkpoint.safetensors or a weights .safetensors "
                        "(weights only; layers it lacks keep their initialisation, which makes them "
                        "start as no-ops)")
    p.add_argument("--calibrate-share", type=int, default=0, metavar="SAMPLES",
                   help="instead of training: fit the decoder's classical share of the --init weights on "
                        "SAMPLES training samples (a fifth held out to report), then --export")
    p.add_argument("--prune", type=float, default=0.0, metavar="FRACTION",
                   help="start from the --init weights with every ResBlock's inner width cut to FRACTION "
                        "(the most important channels kept; see prune_inner)")
    p.add_argument("--widen", type=int, default=0, metavar="HIDDEN",
                   help="start from the --init weights with the decoder's wide RAW block added (inner "
                        "width HIDDEN), as a no-op at first; it trains at 5x the learning rate")
    p.add_argument("--widen-half", type=int, default=0, metavar="HIDDEN",
                   help="start from the --init weights with the inner width of the decoder's ResBlocks at H/2 "
                        "widened to HIDDEN, the new channels no-ops at first; those blocks train at 5x the "
                        "learning rate")
    p.add_argument("--objective", choices=["l1", "relative"], default="l1",
                   help="the output's loss: l1 over the batch, or relative (each sample weighted by "
                        "its relative error, as per-image PSNR weights it)")
    p.add_argument("--condition", choices=list(CONDITIONS), default="degraded",
                   help="the colour condition: degraded (blurred, noisier; half restyled), sharp (as "
                        "inference makes it; half restyled) or clean (as inference makes it, no style)")
    p.add_argument("--network-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x the relative L1 of the network's own render (before the classical "
                        "share) on 4x4 means")
    p.add_argument("--headroom", action="store_true",
                   help="measure what the latent diffusion adds to the --init weights, and what a perfect "
                        "latent would add, on --val-size validation samples; then exit")
    args = p.parse_args(argv)
    # Refused before anything is made: rawrestore loads no pickle.
    if args.init:
        refuse_pickle(args.init)
    old_checkpoint = Path(args.out) / "checkpoint.pt"
    if old_checkpoint.exists() and not (Path(args.out) / CHECKPOINT).exists():
        raise WeightsError(f"{old_checkpoint}: a checkpoint of an older rawrestore, a pickle, which rawrestore "
                           "no longer loads (loading it can run any code in it); use another --out")

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # the batches' temporaries, as at inference
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a", buffering=1)

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        log.write(line + "\n")

    torch.manual_seed(args.seed)
    if args.calibrate_share:
        share_stage(args, say)
        return
    if (args.prune or args.widen or args.widen_half) and not args.init:
        raise SystemExit("--prune, --widen and --widen-half need --init (the weights to change)")
    train = SyntheticRAWDataset(args.data, "train", crop=args.crop, seed=args.seed,
                                darktable_profiles=args.darktable_profiles, **CONDITIONS[args.condition])
    # Validation as at inference: the colour condition neither degraded nor restyled.
    val_set = SyntheticRAWDataset(args.data, "val", crop=args.crop, seed=12345, restyle_probability=0.0,
                                  degrade_condition=False)
    val = [val_set[i] for i in range(args.val_size)]
    if args.headroom:
        if not args.init:
            raise SystemExit("--headroom needs --init (the weights to measure)")
        say(f"{args.init}, {args.val_size} validation samples: {format_headroom(latent_headroom(load_init(args.init)[0], val))}")
        return
    step, elapsed = 0, 0.0
    ckpt = out / CHECKPOINT
    state = read_checkpoint(ckpt) if ckpt.exists() else None
    if state is not None:  # resume: the networks in the shape they were saved with
        bundle = fresh_bundle(state[0])
    else:
        say(f"config {json.dumps(vars(args))}")
        bundle = fresh_bundle()
        if args.init:
            bundle, missing = load_init(args.init, args.widen, args.widen_half)
            say(f"initialised from {args.init}; new: {', '.join(missing) or 'nothing'}")
        if args.prune:
            # Importance measured on training samples from the far end of the set, past this run's own.
            batches = [collate([train[len(train) - 1 - i * args.batch - j] for j in range(args.batch)])
                       for i in range(4)]
            bundle = prune_inner(bundle, args.prune, batches)
            say(f"pruned to {args.prune:g} of the inner widths: {json.dumps(bundle.config())}")
    device = torch.device(args.device)
    bundle.to(device)
    ema = copy.deepcopy(bundle)
    # With --widen the wide block starts at zero inside tuned networks; at the tuning's learning
    # rate it barely moved in 25 minutes (v24), so it trains at WIDE_LR_SCALE times that rate, as
    # do the blocks that --widen-half grows.
    wide = {n for n, _ in bundle.named_parameters()
            if (args.widen and (".decoder.raw_wide." in n or ".decoder.block_wide." in n))
            or (args.widen_half and ".decoder.block_half" in n)}
    groups = [{"params": [p for n, p in bundle.named_parameters() if n not in wide], "lr_scale": 1.0}]
    if wide:
        groups.append({"params": [p for n, p in bundle.named_parameters() if n in wide], "lr_scale": WIDE_LR_SCALE})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=1e-4)
    if state is not None:  # (loading copies the CPU tensors to the networks' device)
        _, parts, run = state
        bundle.load_state_dict(parts["model"])
        ema.load_state_dict(parts["ema"])
        load_optimizer(opt, parts["opt"], run)
        step, elapsed = run["step"], run["elapsed"]
        say(f"resumed at step {step}, {elapsed / 60:.1f} min in")
    say(f"{len(train.paths)} training photos, {len(val_set.paths)} validation photos")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(train, range(step * args.batch, len(train))), batch_size=args.batch,
        num_workers=args.workers, persistent_workers=True, prefetch_factor=4, pin_memory=device.type == "cuda")
    gen = torch.Generator().manual_seed(args.seed + step)
    budget = args.minutes * 60
    last_ckpt = time.time()
    start = time.time() - elapsed
    running: dict[str, float] = {}

    def save_checkpoint() -> None:
        write_checkpoint(ckpt, bundle, ema, opt, step, time.time() - start)

    try:
        for batch in loader:
            elapsed = time.time() - start
            if elapsed >= budget:
                break
            progress = elapsed / budget
            lr = args.lr * (min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * progress)) + 0.02)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            losses = train_step(bundle, opt, batch, gen, args.objective, args.network_loss)
            step += 1
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), bundle.parameters()):
                    pe.lerp_(pm, 1 - decay)
            for k, v in losses.items():
                running[k] = 0.98 * running.get(k, v.item()) + 0.02 * v.item()
            if step % 25 == 0:
                say(f"step {step} lr {lr:.2e} " + " ".join(f"{k} {v:.4f}" for k, v in running.items())
                    + f" | {step * args.batch / max(elapsed, 1):.1f} samples/s")
            if step % args.val_every == 0:
                say(f"step {step} val PSNR (EMA, 2 steps) {validate(ema, val):.2f} dB")
            if time.time() - last_ckpt > 300:
                save_checkpoint()
                last_ckpt = time.time()
    except KeyboardInterrupt:  # Ctrl-C or SIGINT (e.g. ``timeout -s INT``): keep what was done
        save_checkpoint()
        say(f"interrupted at step {step}; checkpoint saved, the same command resumes")
        raise SystemExit(130)
    save_checkpoint()
    say(f"done: step {step}, val PSNR (EMA, 2 steps) {validate(ema, val):.2f} dB")
    if args.export:
        save_bundle(ema, args.export, {"steps_trained": step, "minutes": round(elapsed / 60, 1)})
        say(f"exported {args.export}")


if __name__ == "__main__":
    main()
