"""A training recipe: one TOML file that says everything a run of the core needs, from random
initialisation to the shipped weights (data, split, seeds, model, stages)."""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..models.core import CoreConfig
from .synthesis import SynthesisConfig

STAGE_KINDS = ("decoder", "restorer")


@dataclass(frozen=True)
class Stage:
    """One stage: which network trains (the others frozen), for how many samples, how."""

    kind: str                  # 'decoder': the demosaicking decoder on clean latents; 'restorer'
    samples: int
    batch: int = 8
    lr: float = 1e-3
    warmup_samples: int = 2000
    ema: float = 0.999
    start_fraction: float = 0.3   # restorer: share of samples at the noise-free DTDM start (--steps 1)

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind {self.kind!r}: expected one of {', '.join(STAGE_KINDS)}")
        if self.samples <= 0 or self.batch <= 0:
            raise ValueError("stage samples and batch must be positive")


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    photos: tuple[str, ...]          # folders under the data root
    camconst: str | None             # RawTherapee's camconst.json (GPL data, never shipped)
    darktable_profiles: str | None   # under the data root
    synthesis: SynthesisConfig
    model: CoreConfig
    stages: tuple[Stage, ...]
    sde_lambda: float
    sde_t_start: int
    digest: str

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        text = Path(path).read_bytes()
        raw = tomllib.loads(text.decode())
        data = raw.get("data", {})
        return cls(
            name=raw["name"], seed=int(raw.get("seed", 0)),
            photos=tuple(data.get("photos", ["srgb"])), camconst=data.get("camconst"),
            darktable_profiles=data.get("darktable_profiles"),
            synthesis=_typed(SynthesisConfig, raw.get("synthesis", {})),
            model=_typed(CoreConfig, raw.get("model", {})),
            stages=tuple(Stage(**s) for s in raw["stages"]),
            sde_lambda=float(raw.get("sde", {}).get("lambda", 0.3)),
            sde_t_start=int(raw.get("sde", {}).get("t_start", 70)),
            digest=hashlib.sha256(text).hexdigest()[:12])


def _typed(cls: Any, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
