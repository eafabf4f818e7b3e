"""The whole benchmark suite in one command, each script at its full settings, one after another.

    python benchmarks/run_all.py [--out benchmarks/results] [--only kernels training ddim ...] [--threads 1 2]

Every script validates its contenders before timing them and reports ratios measured in its own run (see each
script's docstring). This runner waits for a quiet machine first (the 1-minute load average below --max-load,
or it says how loaded the machine was), then runs the scripts in turn and writes OUT/<name>.txt (the script's
report) next to the files the scripts write themselves (OUT/kernels/bench_kernels.{md,json}). The figures quoted
in benchmarks/README.md come from this command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> the script and its arguments (the threads are appended)
SUITE = {
    "kernels": ["bench_kernels.py"],  # GEMM, conv, group norm, attention; the FMA probe
    "training": ["bench_training.py", "--configs", "digits", "--no-memory"],  # one training step, digits U-Net
    "ddim": ["bench_interop.py", "--config", "digits", "--batch", "64", "--ddim-steps", "50"],  # 50 DDIM steps
    "samplers": ["bench_samplers.py"],  # sampler updates without the model, against diffusers
    "sampler_step": ["bench_sampler_step.py"],  # the fused update kernel alone
    "autodiff": ["bench_autodiff.py"],  # the autodiff's per-op overhead and a small MLP step
}


def wait_for_quiet(max_load: float, patience: float) -> float:
    """The 1-minute load average once it is below max_load, or after `patience` seconds, whichever is first."""
    deadline = time.monotonic() + patience
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() < deadline:
        time.sleep(10)
        load = os.getloadavg()[0]
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--only", nargs="+", choices=list(SUITE), default=list(SUITE))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-load", type=float, default=0.5, help="wait until the 1-minute load is below this")
    parser.add_argument("--patience", type=float, default=300, help="seconds to wait for a quiet machine")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        load = wait_for_quiet(args.max_load, args.patience)
        command = [sys.executable, str(HERE / SUITE[name][0]), *SUITE[name][1:], "--threads",
                   *map(str, args.threads)]
        if name == "kernels":
            command += ["--out", str(args.out / "kernels")]
        print(f"== {name} (load average {load:.2f} before it): {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        report = result.stdout + (f"\n{result.stderr}" if result.returncode else "")
        temporary = args.out / f".{name}.txt.tmp"
        temporary.write_text(f"# load average before: {load:.2f}\n{report}")
        temporary.replace(args.out / f"{name}.txt")
        print(report, flush=True)
        print(f"== {name}: {time.monotonic() - start:.0f} s, exit {result.returncode}", flush=True)
        if result.returncode:
            sys.exit(f"run_all: {name} failed (exit {result.returncode}); its output is in {args.out / name}.txt")


if __name__ == "__main__":
    main()
