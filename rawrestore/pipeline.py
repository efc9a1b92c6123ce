"""Glue: RAW -> developed sRGB. Loads nothing itself; the CLI and the library call this."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .isp import develop_classical
from .rawio import RawImage
from .styles import get_style


@dataclass
class DevelopOptions:
    exposure_ev: float = 0.0
    auto_exposure: bool = True
    style: str = "natural"


class Developer:
    """Develops :class:`RawImage` frames to display sRGB (3, H, W) tensors in [0, 1], upright."""

    def __init__(self, options: DevelopOptions | None = None):
        self.options = options or DevelopOptions()
        self.style = get_style(self.options.style)  # raises StyleError before any file is read

    def develop(self, raw: RawImage) -> torch.Tensor:
        opts = self.options
        image = develop_classical(raw, exposure_ev=opts.exposure_ev, auto_exposure=opts.auto_exposure)
        return self.style(image)
