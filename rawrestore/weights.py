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
    try:
        bundle.load_state_dict(state)
    except RuntimeError:  # torch lists every mismatch, dozens of lines
        raise WeightsError(f"{path}: its tensors do not fit the networks its config describes "
                           "(a damaged or foreign weights file)") from None
    return bundle.eval()


# Pickles (torch.save's format) run code when loaded: rawrestore reads none.
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}


def refuse_pickle(path: str | Path) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(f"{path}: a PyTorch pickle; rawrestore loads only .safetensors files "
                           "(loading a pickle can run any code in it)")


def read_weights(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A weights file's config (from its header, bounded) and tensors (every one finite), older
    files' in today's shapes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    refuse_pickle(path)
    try:
        with safe_open(str(path), "pt") as fh:
            config = json.loads(fh.metadata()["config"])
    except Exception as err:
        raise WeightsError(f"{path}: not a rawrestore weights file ({err})") from None
    config = checked_config(config, path)
    try:
        state = load_file(str(path))
    except Exception as err:
        raise WeightsError(f"{path}: not a rawrestore weights file ({err})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"{path}: tensor {name} holds NaN or infinite values (damaged weights)")
    return config, with_current_bands(state)


# Bounds of a weights file's config, checked before any network is built from it, so that a crafted
# header cannot make rawrestore allocate gigabytes; every shipped model is far inside them.
MAX_CHANNELS = 1024
MAX_TIMESTEPS = 10_000


def checked_config(config: object, path: str | Path) -> dict:
    """``config`` (a weights header's) if every value is of its type and within bounds."""
    def bad(key: str, value: object) -> WeightsError:
        return WeightsError(f"{path}: weights config {key} = {value!r} is out of bounds (a damaged or "
                            "crafted header)")

    def channels(key: str, value: object, least: int = 1) -> None:
        if type(value) is not int or not least <= value <= MAX_CHANNELS:
            raise bad(key, value)

    if not isinstance(config, dict) or not isinstance(config.get("scheduler"), dict):
        raise WeightsError(f"{path}: not a rawrestore weights file (no model config in its header)")
    channels("latent_channels", config.get("latent_channels"))
    for key in ("rvae_hidden", "rvae_half_hidden", "rvae_wide_hidden"):
        if key in config:
            channels(key, config[key], least=0 if key == "rvae_wide_hidden" else 1)
    for key in ("denoiser_widths", "denoiser_hidden"):
        if key in config or key == "denoiser_widths":
            values = config.get(key)
            if not isinstance(values, list) or len(values) != 3:
                raise bad(key, values)
            for value in values:
                channels(key, value)
    scheduler = config["scheduler"]
    steps, start, lam = (scheduler.get(k) for k in ("num_train_timesteps", "t_start", "lam"))
    if set(scheduler) != {"num_train_timesteps", "t_start", "lam"}:
        raise bad("scheduler", scheduler)
    if type(steps) is not int or not 1 <= steps <= MAX_TIMESTEPS:
        raise bad("scheduler.num_train_timesteps", steps)
    if type(start) is not int or not 1 <= start <= steps:
        raise bad("scheduler.t_start", start)
    if type(lam) not in (int, float) or not 0 < lam <= 100:
        raise bad("scheduler.lam", lam)
    return config


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


HUB_TIMEOUT_S = 5.0  # for the hub's first answer; a reachable hub answers within a second


def hub_weights_path(entry: WeightsEntry) -> Path:
    """The published copy from huggingface_hub's cache, else downloaded (not with HF_HUB_OFFLINE).

    Before downloading, one request with a short timeout and no retries asks the hub for the file:
    hf_hub_download alone retries an unreachable hub for about 24 s, logging each retry."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"{entry.hub_repo}/{entry.hub_filename}@{entry.hub_revision}"
    fallback = "use the bundled weights (the default) or --weights PATH"
    try:
        return Path(hf_hub_download(entry.hub_repo, entry.hub_filename, revision=entry.hub_revision,
                                    local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise WeightsError(f"weights {where} are not in the local Hugging Face cache and HF_HUB_OFFLINE is set (offline); "
                           f"{fallback}")
    try:
        get_hf_file_metadata(hf_hub_url(entry.hub_repo, entry.hub_filename, revision=entry.hub_revision),
                             timeout=HUB_TIMEOUT_S)
    except Exception as err:  # no network, no such repo or file, refused
        raise WeightsError(f"weights {where} are not in the local Hugging Face cache and the hub cannot be "
                           f"reached (offline? {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no reply'}); "
                           f"{fallback}") from None
    try:
        return Path(hf_hub_download(entry.hub_repo, entry.hub_filename, revision=entry.hub_revision))
    except Exception as err:  # the connection broke during the download
        raise WeightsError(f"could not download weights {where} from the hub: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else 'no reply'}") from None


@dataclass(frozen=True)
class WeightsSource:
    """A weights file, its sha256, and whether weights.toml lists that sha256 (one of our releases)."""
    path: Path
    sha256: str
    verified: bool


def listed_sha256() -> set[str]:
    """The sha256 of every weights file the packaged weights.toml lists."""
    text = resources.files("rawrestore").joinpath("weights/weights.toml").read_text()
    return {entry["sha256"] for entry in tomllib.loads(text)["weights"]}


def weights_source(spec: str | None = None) -> WeightsSource:
    """Where ``spec`` (as :func:`load_weights` takes it) points, checked: the bundled and the hub
    copy must match weights.toml; a file of the user's is verified when weights.toml lists its
    sha256, and is otherwise unverified (the caller warns)."""
    if spec is None or spec == "hub":
        entry = manifest()
        path = bundled_weights_path(entry) if spec is None else hub_weights_path(entry)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        if (actual := sha256_of(path)) != entry.sha256:
            raise WeightsError(f"weights file {path} has sha256 {actual[:12]}…, expected {entry.sha256[:12]}… "
                               "(corrupted or replaced; reinstall rawrestore or pass --weights)")
        return WeightsSource(path, actual, True)
    from safetensors import safe_open

    path = Path(spec)
    refuse_pickle(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), "pt"):  # the header alone: a pickle under another name fails here
            pass
    except Exception as err:
        raise WeightsError(f"{path}: not a rawrestore weights file ({err})") from None
    actual = sha256_of(path)
    return WeightsSource(path, actual, actual in listed_sha256())


def load_weights(spec: str | None = None) -> ModelBundle:
    """``None``: the bundled weights (sha256-checked); ``'hub'``: the hub copy (sha256-checked);
    anything else: a path to a .safetensors file of the user's (see :func:`weights_source`)."""
    return load_bundle(weights_source(spec).path)
