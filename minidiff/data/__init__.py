"""minidiff.data: offline datasets and a loader.

2-D toys (toy2d): moons, swiss_roll, eight_gaussians, checkerboard, spirals, by name in TOY_DATASETS.
Images (images): the 8x8 handwritten digits shipped with the package, Fashion-MNIST from its idx files.
DataLoader (loader): shuffled batches and random flips from a numpy Generator, with exact resume.
"""

from minidiff.data.images import digits, fashion_mnist
from minidiff.data.loader import DataLoader
from minidiff.data.toy2d import TOY_DATASETS, checkerboard, eight_gaussians, moons, spirals, swiss_roll

__all__ = ["TOY_DATASETS", "DataLoader", "checkerboard", "digits", "eight_gaussians", "fashion_mnist", "moons",
           "spirals", "swiss_roll"]
