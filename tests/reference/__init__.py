"""PyTorch twins of minidiff's functions: the external reference for numerics (tests) and speed
(benchmarks). Only tests and benchmarks import torch; minidiff itself never does."""
