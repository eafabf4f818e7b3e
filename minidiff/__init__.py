"""minidiff: diffusion models from scratch, every equation a readable NumPy function.

Start with the chapter notebooks (notebooks/00_quickstart.py) and `python -m minidiff info`.
"""

from minidiff import kernels
from minidiff.backend import (
    available_backends,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from minidiff.settings import fast_mode

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "available_backends",
    "fast_mode",
    "get_backend",
    "get_num_threads",
    "kernels",
    "set_backend",
    "set_num_threads",
    "use_backend",
]
