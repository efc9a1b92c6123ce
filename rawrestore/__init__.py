"""rawrestore: camera RAW -> finished sRGB with a RAW-domain diffusion model."""
from .rawio import RawImage, RawReadError, read_raw
from .isp import develop_classical

__version__ = "0.1.0"
__all__ = ["RawImage", "RawReadError", "read_raw", "develop_classical", "__version__"]
