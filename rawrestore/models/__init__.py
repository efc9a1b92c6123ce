"""Networks only: no sampling logic lives here (see rawrestore.schedulers)."""
from .denoiser import LatentDenoiser
from .rvae import RVAE, RAWEncoder, RGBDecoder

__all__ = ["LatentDenoiser", "RVAE", "RAWEncoder", "RGBDecoder"]
