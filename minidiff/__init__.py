"""minidiff: diffusion models from scratch, every equation a readable NumPy function.

Start with the chapter notebooks (notebooks/00_tour.py, a ten-minute tour of diffusion) and `python -m minidiff info`.
"""

from minidiff import (
    autodiff,
    checkpoint,
    data,
    diffusion,
    editing,
    functional,
    guidance,
    interop,
    kernels,
    metrics,
    nn,
    optim,
    samplers,
    sde,
)
from minidiff.autodiff import Tensor, enable_grad, no_grad, tensor
from minidiff.backend import (
    available_backends,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from minidiff.settings import fast_mode, optional_reference

__version__ = "0.1.0"

__all__ = [
    "Tensor",
    "__version__",
    "autodiff",
    "available_backends",
    "checkpoint",
    "data",
    "diffusion",
    "editing",
    "enable_grad",
    "fast_mode",
    "functional",
    "get_backend",
    "get_num_threads",
    "guidance",
    "interop",
    "kernels",
    "metrics",
    "nn",
    "no_grad",
    "optim",
    "optional_reference",
    "samplers",
    "sde",
    "set_backend",
    "set_num_threads",
    "tensor",
    "use_backend",
]
