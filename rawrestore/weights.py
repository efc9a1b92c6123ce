"""Model weights: safetensors files, the weights.toml manifest, sha256 checks and the hub.

The trained weights ship inside the package (rawrestore/weights/). ``weights.toml`` at the
repository root names them with version, size, sha256, how they were trained, and the hub
coordinates where a published copy would live; a copy of it ships in the package too.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .models import RVAE, LatentDenoiser
from .schedulers import IRSDEScheduler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class WeightsError(Exception):
    """Weights that cannot be used: missing, corrupted, or not available offline."""


class ModelBundle(nn.Module):
    """The two networks and the scheduler they were trained with."""

    def __init__(self, rvae: RVAE, denoiser: LatentDenoiser, scheduler: IRSDEScheduler):
        super().__init__()
        self.rvae = rvae
        self.denoiser = denoiser
        self.scheduler = scheduler

    def config(self) -> dict:
        d = self.denoiser
        return {"latent_channels": self.rvae.latent_channels,
                "rvae_hidden": self.rvae.encoder.block.conv1.out_channels,
                "rvae_half_hidden": self.rvae.decoder.block_half.conv1.out_channels,
                "rvae_wide_hidden": self.rvae.decoder.block_wide.conv1.out_channels if self.rvae.decoder.block_wide else 0,
                "denoiser_widths": [d.enc0.conv2.out_channels, d.enc1.conv2.out_channels, d.mid[0].conv2.out_channels],
                "denoiser_hidden": [d.enc0.conv1.out_channels, d.enc1.conv1.out_channels, d.mid[0].conv1.out_channels],
                "scheduler": {"num_train_timesteps": self.scheduler.T, "t_start": self.scheduler.t_start,
                              "lam": self.scheduler.lam}}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(bundle: ModelBundle, path: str | Path, info: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in bundle.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(bundle.config()), "info": json.dumps(info or {})})
    return path


def load_bundle(path: str | Path, sha256: str | None = None) -> ModelBundle:
    """Load weights; with ``sha256`` the file must match it (never a silent load of another file)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 is not None and (actual := sha256_of(path)) != sha256:
        raise WeightsError(f"weights file {path} has sha256 {actual[:12]}…, expected {sha256[:12]}… "
                           "(corrupted or replaced; reinstall rawrestore or pass --weights)")
    config, state = read_weights(path)
    bundle = bundle_from_config(config)
    bundle.load_state_dict(state)
    return bundle.eval()


def read_weights(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A weights file's config (from its header) and tensors, older files' in today's shapes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as fh:
            config = json.loads(fh.metadata()["config"])
        state = load_file(str(path))
    except Exception as err:
        raise WeightsError(f"{path}: not a rawrestore weights file ({err})") from None
    return config, with_current_bands(state)


def with_current_bands(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older files in today's shapes, with the same output. Before v8 the classical share had one
    logistic for all bands of the difference, before v14 none for its low band, and before v10
    the decoder had one detail gate for both bands of the classical detail. A band that takes the
    share (or gate) of the band above it is exactly the blend without it."""
    share, gate = "rvae.decoder.classical_share.logit", "rvae.decoder.detail_gate"
    for part in ("weight", "bias"):
        if (rows := state.get(f"{share}.{part}")) is not None and len(rows) in (3, 6):
            state[f"{share}.{part}"] = torch.cat([rows] * 3 if len(rows) == 3 else [rows, rows[3:]])
        if (rows := state.get(f"{gate}.{part}")) is not None and len(rows) == 12:
            state[f"{gate}.{part}"] = torch.cat([rows] * 2)
    return state


def bundle_from_config(config: dict) -> ModelBundle:
    """The untrained networks that :meth:`ModelBundle.config` describes."""
    # Files from before the inner widths were configurable (v6 and older) have them equal to the widths.
    return ModelBundle(RVAE(config["latent_channels"], config.get("rvae_hidden", 64),
                            config.get("rvae_half_hidden", 16), config.get("rvae_wide_hidden", 0)),
                       LatentDenoiser(config["latent_channels"], tuple(config["denoiser_widths"]),
                                      hidden=tuple(config.get("denoiser_hidden", config["denoiser_widths"]))),
                       IRSDEScheduler(**config["scheduler"]))


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    version: str
    file: str
    sha256: str
    size: int
    hub_repo: str
    hub_revision: str
    hub_filename: str


def manifest() -> WeightsEntry:
    """The default weights entry of the packaged weights.toml."""
    text = resources.files("rawrestore").joinpath("weights/weights.toml").read_text()
    entry = tomllib.loads(text)["weights"][0]
    hub = entry["hub"]
    return WeightsEntry(entry["name"], entry["version"], entry["file"], entry["sha256"], entry["size"],
                        hub["repo_id"], hub["revision"], hub["filename"])


def bundled_weights_path(entry: WeightsEntry) -> Path:
    return Path(str(resources.files("rawrestore").joinpath("weights", Path(entry.file).name)))


def hub_weights_path(entry: WeightsEntry) -> Path:
    """Fetch the published copy through huggingface_hub's cache (respects HF_HUB_OFFLINE)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        return Path(hf_hub_download(entry.hub_repo, entry.hub_filename, revision=entry.hub_revision,
                                    local_files_only=offline))
    except LocalEntryNotFoundError:
        raise WeightsError(f"weights {entry.hub_repo}/{entry.hub_filename}@{entry.hub_revision} are not in the "
                           "local Hugging Face cache and the hub cannot be reached (offline); "
                           "use the bundled weights (the default) or --weights PATH") from None
    except Exception as err:  # network errors, missing repo, auth
        raise WeightsError(f"could not download weights from the hub: {type(err).__name__}: {err}") from None


def load_weights(spec: str | None = None) -> ModelBundle:
    """``None``: the bundled weights (sha256-checked); ``'hub'``: the hub copy (sha256-checked);
    anything else: a path to a .safetensors file of the user's."""
    if spec is None or spec == "hub":
        entry = manifest()
        path = bundled_weights_path(entry) if spec is None else hub_weights_path(entry)
        return load_bundle(path, sha256=entry.sha256)
    return load_bundle(spec)
