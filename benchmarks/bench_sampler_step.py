"""The fused sampler step: minidiff (NumPy twin, C++) against PyTorch eager, 1 and 2 threads.

    python benchmarks/bench_sampler_step.py [--sizes 65536 1048576] [--repeats 15]

Validates every contender against the float64 formula first and refuses to time a wrong one. Ratios
are to PyTorch eager as people write it ("torch"); "torch-in-place" is PyTorch with preallocated
buffers and in-place ops, its best without a compiler. Below 1 means faster than "torch".
The step is memory-bound: the fused kernel reads or writes 4 arrays per element, operator-by-operator
evaluation (NumPy, PyTorch eager) about 14.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from _timing import interleaved_medians, pinned_threads, ratio_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference.torch_twins import sampler_step_torch

import minidiff as md
from minidiff.kernels import StepCoefs, sampler_step

COEFS = StepCoefs(c_x=1.02, c_eps=-0.15, c_z=0.1, c_x0=0.4, r_x=1.1, r_eps=-0.45, clip=1.0)


def torch_step_in_place(x, eps, z, c: StepCoefs, out, tmp):
    """PyTorch at its most careful: preallocated buffers, in-place ops, alpha-scaled adds."""
    torch.mul(x, c.c_x, out=out).add_(eps, alpha=c.c_eps).add_(z, alpha=c.c_z)
    torch.mul(x, c.r_x, out=tmp).add_(eps, alpha=c.r_eps).clamp_(-c.clip, c.clip)
    return out.add_(tmp, alpha=c.c_x0)


def formula_float64(x, eps, z, c: StepCoefs):
    x, eps, z = (a.astype(np.float64) for a in (x, eps, z))
    return c.c_x * x + c.c_eps * eps + c.c_z * z + c.c_x0 * np.clip(c.r_x * x + c.r_eps * eps, -c.clip, c.clip)


def contenders_for(x, eps, z) -> dict:
    tx, teps, tz = (torch.from_numpy(a) for a in (x, eps, z))
    t_out, t_tmp, out = torch.empty_like(tx), torch.empty_like(tx), np.empty_like(x)
    contenders = {
        "torch": lambda: sampler_step_torch(tx, teps, tz, COEFS),
        "torch-in-place": lambda: torch_step_in_place(tx, teps, tz, COEFS, t_out, t_tmp),
    }

    def on(backend: str):
        def run():
            with md.use_backend(backend):
                return sampler_step(x, eps, z, COEFS, out=out)

        return run

    for backend in md.available_backends():
        contenders[f"minidiff-{backend}"] = on(backend)
    return contenders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[65_536, 1_048_576, 8_388_608])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n in args.sizes:
        x, eps, z = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
        contenders = contenders_for(x, eps, z)
        expected = formula_float64(x, eps, z, COEFS)
        scale = np.abs(x) * 1.46 + np.abs(eps) * 0.33 + np.abs(z) * 0.1 + 0.5
        for name, fn in contenders.items():
            got = np.asarray(fn(), dtype=np.float64)
            worst = float(np.max(np.abs(got - expected) / scale))
            if worst > 1e-5:
                raise SystemExit(f"{name} is wrong (relative error {worst:.2e}): not timing it")
        for threads in args.threads:
            with pinned_threads(threads):
                medians = interleaved_medians(contenders, args.repeats)
            title = f"sampler step, n = {n:,} float32, {threads} thread(s)"
            gbs = 4 * 4 * n / medians.get("minidiff-cpp", medians["torch"]) / 1e9
            print(ratio_table(title, medians) + f"\n  (fused kernel moves {gbs:.1f} GB/s)\n")


if __name__ == "__main__":
    main()
