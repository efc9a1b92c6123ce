"""rawrestore: camera RAW -> finished sRGB with a RAW-domain diffusion model.

    from rawrestore import read_raw, Developer, DevelopOptions, write_image
"""
__version__ = "0.1.0"  # before the imports: output.py and cli.py read it

from .isp import develop_classical
from .output import write_image
from .pipeline import Developer, DevelopOptions
from .rawio import RawImage, RawReadError, read_raw

__all__ = ["Developer", "DevelopOptions", "RawImage", "RawReadError", "develop_classical", "read_raw",
           "write_image", "__version__"]
