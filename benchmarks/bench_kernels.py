"""The C++ kernels of chapter 11 (GEMM, conv2d, group norm, attention) against NumPy's BLAS and PyTorch (CPU),
1 and 2 threads, one run.

    python benchmarks/bench_kernels.py [--threads 1 2] [--repeats 9] [--out benchmarks/results/kernels]
    python benchmarks/bench_kernels.py --quick --out /tmp/bench-kernels-smoke   # CI smoke test: one tiny size per
                                                                                  # kernel, one run, seconds

Sections:
  peak   the FMA probe (minidiff._C.fma_peak): chains of independent fused multiply-adds on registers in each
         micro-kernel's instruction set, float32; the ceiling the GEMM's "of peak" column refers to (the best of
         its runs, which are repeated after each GEMM timing); its per-thread rate on 2 threads against 1 tells
         whether the machine is quiet (another process on a core halves it)
  gemm   C = A B, float32, 512^3 and 1024^3: minidiff's version 3 (blocked) and version 4 (packed, best
         micro-kernel), NumPy's matmul (its BLAS), torch.mm
  conv   3x3 conv2d, stride 1, padding 1, with bias, on the U-Net shapes (N=64, C=64, 16x16) and (N=64, C=32,
         32x32): forward, and forward + backward through minidiff's autodiff on the numpy and cpp backends,
         against torch.nn.functional.conv2d on NCHW and channels_last tensors
  gn     group norm (32 groups) alone, + SiLU, + AdaGN scale-shift + SiLU, on the same U-Net shapes: forward, and
         forward + backward through minidiff's autodiff (one fused op) on the numpy and cpp backends, against
         PyTorch eager (F.group_norm, then the scale-shift and F.silu, as a PyTorch user writes them)
  attention  scaled dot-product attention, forward + backward through minidiff's autodiff on the numpy and cpp
         backends (B=64, 4 heads, L=64 and 256 tokens, d=32), against torch.nn.functional.scaled_dot_product_attention
         and the plain matmul-softmax-matmul of PyTorch eager

Every contender is validated first (against float64 NumPy or float64 PyTorch on the same inputs) and a wrong
one is not timed. Then the contenders run in turns (interleaved), medians of --repeats, every library pinned to
the same thread count (minidiff's, PyTorch's and the BLAS's). The machine is shared: the load average before
timing is printed, and the figures to quote are the ratios measured in the same run ("vs torch", "vs numpy").
Output: a markdown table on stdout and in OUT/bench_kernels.md, every number in OUT/bench_kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from _timing import interleaved_medians, pinned_threads
from threadpoolctl import threadpool_info

import minidiff as md
from minidiff import functional as F
from minidiff.autodiff import Tensor
from minidiff.checkpoint import _write_atomically
from minidiff.kernels.gemm import gemm, micro_kernels

# float32 results against float64 references, as max |error| / max |reference| per array: a float32 dot product
# of K terms rounds to ~sqrt(K) 2^-24 relative (observed <= 2e-6 here for K <= 1024); a wrong index or a missing
# term is off by 1e-2 or more.
TOLERANCE = 1e-4
CONV_SHAPES = ((64, 64, 16), (64, 32, 32))  # (N, C = O, H = W) of the two U-Net levels
QUICK_CONV_SHAPES = ((4, 8, 8),)  # --quick: one tiny size per kernel
ATTENTION_SHAPES = ((64, 4, 64, 32), (64, 4, 256, 32))  # (B, heads, L, d): an 8x8 and a 16x16 U-Net level
QUICK_ATTENTION_SHAPES = ((4, 2, 16, 8),)


@dataclass
class Row:
    section: str  # "gemm", "conv forward", "conv forward+backward", "attention forward+backward"
    case: str
    threads: int
    contender: str
    seconds: float
    gflops: float | None  # None: a memory-bound kernel (group norm), where FLOP/s says little
    vs_torch: float  # time over torch's (NCHW for conv), same run: below 1 is faster
    vs_numpy: float | None  # time over numpy's (gemm) or minidiff-numpy's (conv)
    of_peak: float | None  # GFLOP/s over the FMA probe's best, same thread count (gemm)


# --- the machine ---------------------------------------------------------------------------------------------------


class FmaProbe:
    """The FMA probe (minidiff._C.fma_peak) of each micro-kernel's instruction set, float32, in GFLOP/s per thread
    count: the best of every run in this benchmark. The probe has no memory traffic, so another process on a
    core can only lower a run: the best is the closest to this core's peak."""

    def __init__(self, seconds: float) -> None:
        self.ext = md.backend.extension()
        self.iterations = {}
        for kernel in micro_kernels():  # calibrated to about `seconds` per run
            start = time.perf_counter()
            self.ext.fma_peak(kernel, "float32", 100_000, 1)
            self.iterations[kernel] = max(1, int(100_000 * seconds / max(time.perf_counter() - start, 1e-6)))
        self.best: dict[str, dict[int, float]] = {kernel: {} for kernel in self.iterations}

    def run(self, threads_list: list[int], kernels: list[str] | None = None, rounds: int = 3) -> None:
        for kernel in kernels or list(self.iterations):
            for t in threads_list:
                rate = max(self.ext.fma_peak(kernel, "float32", self.iterations[kernel], t) for _ in range(rounds))
                self.best[kernel][t] = max(self.best[kernel].get(t, 0.0), rate / 1e9)

    def parallel_efficiency(self, kernel: str, threads: int) -> float:
        """Per-thread rate on `threads` threads over the rate on one: below ~0.9, other processes hold cores."""
        return self.best[kernel][threads] / threads / self.best[kernel][1]


def machine_report() -> dict:
    info = md.backend.extension().build_info()
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})" for i in threadpool_info()
            if i.get("user_api") == "blas"]
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_average":
            os.getloadavg(), "minidiff_build": info, "numpy_blas": blas, "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


# --- validation ----------------------------------------------------------------------------------------------------


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected), initial=0.0) / max(np.max(np.abs(expected), initial=0.0), 1e-30))


def validate(label: str, contenders: dict[str, Callable], expected: tuple[np.ndarray, ...]) -> None:
    """Each contender's arrays against the float64 reference; SystemExit naming one that is off."""
    for name, fn in contenders.items():
        got = fn()
        got = got if isinstance(got, tuple) else (got,)
        worst = max(relative_error(g, e) for g, e in zip(got, expected, strict=True))
        if not worst <= TOLERANCE:
            raise SystemExit(f"{label}: {name} is wrong (relative error {worst:.1e} > {TOLERANCE:g}): not timing it")


def numpy_of(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().numpy()


def minidiff_backends() -> list[str]:
    return [b for b in ("numpy", "cpp") if b in md.available_backends()]


def time_against_torch(section: str, case: str, contenders: dict[str, Callable], expected: tuple[np.ndarray, ...],
                       threads_list: list[int], timing: dict, work: float | None = None) -> list[Row]:
    """Validate the contenders against `expected`, then time them on each thread count: a row each, its time
    over torch's and over minidiff-numpy's of the same run; GFLOP/s from `work` (FLOPs; None: memory-bound)."""
    validate(f"{section} {case}", contenders, expected)
    rows = []
    for threads in threads_list:
        with pinned_threads(threads):
            medians = interleaved_medians(contenders, **timing)
        for name, seconds in medians.items():
            rows.append(Row(section, case, threads, name, seconds, None if work is None else work / seconds / 1e9,
                            seconds / medians["torch"], seconds / medians["minidiff-numpy"], None))
    return rows


# --- GEMM ----------------------------------------------------------------------------------------------------------


def gemm_contenders(a: np.ndarray, b: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    out = {name: np.empty((a.shape[0], b.shape[1]), a.dtype) for name in ("v3", "v4", "numpy")}
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t_out = torch.empty(a.shape[0], b.shape[1])
    return {
        "minidiff-v3": lambda: gemm(a, b, out["v3"], version=3),
        "minidiff-v4": lambda: gemm(a, b, out["v4"], version=4),
        "numpy": lambda: np.matmul(a, b, out=out["numpy"]),
        "torch": lambda: torch.mm(ta, tb, out=t_out).numpy(),
    }


def bench_gemm(sizes: list[int], threads_list: list[int], timing: dict, probe: FmaProbe, kernel: str) -> list[Row]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        contenders = gemm_contenders(a, b)
        validate(f"gemm {n}^3", contenders, (a.astype(np.float64) @ b,))
        flops = 2.0 * n**3
        for threads in threads_list:
            with pinned_threads(threads):
                medians = interleaved_medians(contenders, **timing)
            probe.run([threads], [kernel], rounds=1)  # under the same conditions as the timing
            for name, seconds in medians.items():
                rows.append(Row("gemm", f"{n}^3 float32", threads, name, seconds, flops / seconds / 1e9,
                                seconds / medians["torch"], seconds / medians["numpy"], None))
    for row in rows:  # against the best probe run of the whole benchmark
        row.of_peak = row.gflops / probe.best[kernel][row.threads]
    return rows


# --- conv2d ---------------------------------------------------------------------------------------------------------


@dataclass
class ConvInputs:
    x: np.ndarray  # (N, C, H, W) float32
    weight: np.ndarray  # (C, C, 3, 3)
    bias: np.ndarray  # (C,)
    grad_out: np.ndarray  # (N, C, H, W), the upstream gradient


def conv_inputs(n: int, c: int, size: int, rng: np.random.Generator) -> ConvInputs:
    scale = 1 / np.sqrt(9 * c)  # PyTorch's default init range: activations stay O(1)
    return ConvInputs(rng.standard_normal((n, c, size, size)).astype(np.float32),
                      rng.uniform(-scale, scale, (c, c, 3, 3)).astype(np.float32),
                      rng.uniform(-scale, scale, c).astype(np.float32),
                      rng.standard_normal((n, c, size, size)).astype(np.float32))


def minidiff_conv(inputs: ConvInputs, backend: str, backward: bool) -> Callable[[], tuple]:
    def forward():
        with md.use_backend(backend), md.no_grad():
            return (F.conv2d(Tensor(inputs.x), Tensor(inputs.weight), Tensor(inputs.bias), padding=1).data,)

    def forward_backward():
        with md.use_backend(backend):
            x, w, b = (Tensor(a, requires_grad=True) for a in (inputs.x, inputs.weight, inputs.bias))
            y = F.conv2d(x, w, b, padding=1)
            y.backward(inputs.grad_out)
            return y.data, x.grad, w.grad, b.grad

    return forward_backward if backward else forward


def torch_conv(inputs: ConvInputs, backward: bool, channels_last: bool = False,
               dtype: torch.dtype = torch.float32) -> Callable[[], tuple]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.tensor(inputs.x, dtype=dtype).to(memory_format=layout).requires_grad_(backward)
    w, b = (torch.tensor(a, dtype=dtype, requires_grad=backward) for a in (inputs.weight, inputs.bias))
    grad_out = torch.tensor(inputs.grad_out, dtype=dtype).to(memory_format=layout)

    def forward():
        with torch.no_grad():
            return (torch.nn.functional.conv2d(x, w, b, padding=1).numpy(),)

    def forward_backward():
        for t in (x, w, b):
            t.grad = None
        y = torch.nn.functional.conv2d(x, w, b, padding=1)
        y.backward(grad_out)
        return numpy_of(y), numpy_of(x.grad), numpy_of(w.grad), numpy_of(b.grad)

    return forward_backward if backward else forward


def bench_conv(shapes, threads_list: list[int], timing: dict) -> list[Row]:
    rng = np.random.default_rng(1)
    rows = []
    for n, c, size in shapes:
        inputs = conv_inputs(n, c, size, rng)
        flops = 2.0 * n * c * c * 9 * size * size  # the forward's multiply-adds, twice
        for backward in (False, True):
            contenders = {f"minidiff-{b}": minidiff_conv(inputs, b, backward) for b in minidiff_backends()}
            contenders["torch"] = torch_conv(inputs, backward)
            contenders["torch-channels_last"] = torch_conv(inputs, backward, channels_last=True)
            rows += time_against_torch("conv forward+backward" if backward else "conv forward",
                                       f"N={n} C={c} {size}x{size}", contenders,
                                       torch_conv(inputs, backward, dtype=torch.float64)(), threads_list,
                                       {**timing, "warmup": 1},
                                       work=3 * flops if backward else flops)  # the backward: two more products
    return rows


# --- group norm -----------------------------------------------------------------------------------------------------

GN_SHAPES = ((64, 64, 16), (64, 32, 32))  # (N, C, H = W) of the two U-Net levels, 32 groups as in the U-Net
QUICK_GN_SHAPES = ((4, 32, 8),)
GN_GROUPS = 32
GN_VARIANTS = {  # what the U-Net fuses into the norm: nothing (attention's norm), SiLU (norm1), AdaGN + SiLU (norm2)
    "group norm": dict(activation=None, scale_shift=False),
    "group norm + SiLU": dict(activation="silu", scale_shift=False),
    "group norm + scale-shift + SiLU": dict(activation="silu", scale_shift=True),
}


@dataclass
class GroupNormInputs:
    x: np.ndarray  # (N, C, H, W) float32
    weight: np.ndarray  # (C,)
    bias: np.ndarray  # (C,)
    scale: np.ndarray  # (N, C, 1, 1), AdaGN's
    shift: np.ndarray  # (N, C, 1, 1)
    grad_out: np.ndarray  # (N, C, H, W), the upstream gradient


def group_norm_inputs(n: int, c: int, size: int, rng: np.random.Generator) -> GroupNormInputs:
    f32 = lambda *shape, s=1.0, m=0.0: (m + s * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    return GroupNormInputs(f32(n, c, size, size, m=0.5), f32(c, s=0.2, m=1.0), f32(c, s=0.2), f32(n, c, 1, 1, s=0.2),
                           f32(n, c, 1, 1, s=0.2), f32(n, c, size, size))


def minidiff_group_norm(inputs: GroupNormInputs, backend: str, backward: bool, activation: str | None,
                        scale_shift: bool) -> Callable[[], tuple]:
    """F.group_norm with the variant's epilogue fused in, through minidiff's autodiff on `backend`."""
    names = ("x", "weight", "bias", "scale", "shift") if scale_shift else ("x", "weight", "bias")

    def run():
        with md.use_backend(backend), md.enable_grad() if backward else md.no_grad():
            ts = {k: Tensor(getattr(inputs, k), requires_grad=backward) for k in names}
            y = F.group_norm(ts["x"], GN_GROUPS, ts["weight"], ts["bias"], scale=ts.get("scale"),
                             shift=ts.get("shift"), activation=activation)
            if not backward:
                return (y.data,)
            y.backward(inputs.grad_out)
            return (y.data, *(t.grad for t in ts.values()))

    return run


def torch_group_norm(inputs: GroupNormInputs, backward: bool, activation: str | None, scale_shift: bool,
                     dtype: torch.dtype = torch.float32) -> Callable[[], tuple]:
    """The same as a PyTorch user writes it: F.group_norm, then (1 + scale) and shift, then F.silu."""
    names = ("x", "weight", "bias", "scale", "shift") if scale_shift else ("x", "weight", "bias")
    ts = {k: torch.tensor(getattr(inputs, k), dtype=dtype, requires_grad=backward) for k in names}
    grad_out = torch.tensor(inputs.grad_out, dtype=dtype)

    def forward() -> torch.Tensor:
        y = torch.nn.functional.group_norm(ts["x"], GN_GROUPS, ts["weight"], ts["bias"])
        if scale_shift:
            y = y * (1 + ts["scale"]) + ts["shift"]
        return torch.nn.functional.silu(y) if activation == "silu" else y

    def run():
        if not backward:
            with torch.no_grad():
                return (forward().numpy(),)
        for t in ts.values():
            t.grad = None
        y = forward()
        y.backward(grad_out)
        return (numpy_of(y), *(numpy_of(t.grad) for t in ts.values()))

    return run


def bench_group_norm(shapes, threads_list: list[int], timing: dict) -> list[Row]:
    rng = np.random.default_rng(2)
    rows = []
    for n, c, size in shapes:
        inputs = group_norm_inputs(n, c, size, rng)
        for variant, options in GN_VARIANTS.items():
            for backward in (False, True):
                contenders = {f"minidiff-{b}": minidiff_group_norm(inputs, b, backward, **options)
                              for b in minidiff_backends()}
                contenders["torch"] = torch_group_norm(inputs, backward, **options)
                rows += time_against_torch(f"{variant} {'forward+backward' if backward else 'forward'}",
                                           f"N={n} C={c} {size}x{size}", contenders,
                                           torch_group_norm(inputs, backward, **options, dtype=torch.float64)(),
                                           threads_list, timing)
    return rows


# --- attention ------------------------------------------------------------------------------------------------------


def minidiff_attention(arrays: tuple[np.ndarray, ...], backend: str) -> Callable[[], tuple]:
    q, k, v, grad_out = arrays

    def forward_backward():
        with md.use_backend(backend):
            ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
            out = F.scaled_dot_product_attention(*ts)
            out.backward(grad_out)
            return out.data, *(t.grad for t in ts)

    return forward_backward


def torch_attention(arrays: tuple[np.ndarray, ...], fused: bool, dtype: torch.dtype = torch.float32) -> Callable:
    """fused: torch.nn.functional.scaled_dot_product_attention; else softmax(q k^T / sqrt(d)) v in three ops."""
    q, k, v = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays[:3])
    grad_out = torch.tensor(arrays[3], dtype=dtype)
    scale = 1 / np.sqrt(q.shape[-1])

    def forward_backward():
        for t in (q, k, v):
            t.grad = None
        if fused:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v
        out.backward(grad_out)
        return numpy_of(out), numpy_of(q.grad), numpy_of(k.grad), numpy_of(v.grad)

    return forward_backward


def bench_attention(shapes, threads_list: list[int], timing: dict) -> list[Row]:
    rng = np.random.default_rng(2)
    rows = []
    for b, heads, length, d in shapes:
        arrays = tuple(rng.standard_normal((b, heads, length, d)).astype(np.float32) for _ in range(4))
        contenders = {f"minidiff-{name}": minidiff_attention(arrays, name) for name in minidiff_backends()}
        contenders["torch"] = torch_attention(arrays, fused=True)
        contenders["torch-matmul-softmax"] = torch_attention(arrays, fused=False)
        rows += time_against_torch("attention forward+backward", f"B={b} heads={heads} L={length} d={d}",
                                   contenders, torch_attention(arrays, fused=True, dtype=torch.float64)(),
                                   threads_list, {**timing, "warmup": 1},
                                   work=3 * 2.0 * b * heads * length * length * 2 * d)  # forward 2 products, back 4
    return rows


# --- report ---------------------------------------------------------------------------------------------------------


def markdown(rows: list[Row], peaks: dict[str, dict[int, float]], kernel: str, machine: dict) -> str:
    efficiency = ", ".join(f"{t} threads {100 * e:.0f}%" for t, e in machine["probe_parallel_efficiency"].items())
    lines = [f"load average before timing: {machine['load_average'][0]:.2f} on {machine['cores']} cores (FMA probe "
             f"per thread, of one: {efficiency}); "
             f"GEMM micro-kernel: {kernel}; PyTorch {machine['torch']} ({machine['torch_cpu_capability']}); "
             f"NumPy's BLAS: {', '.join(machine['numpy_blas'])}", "",
             "| FMA probe, float32 | " + " | ".join(f"{t} thread(s)" for t in next(iter(peaks.values()))) + " |",
             "|---|" + "---:|" * len(next(iter(peaks.values())))]
    lines += [f"| {name} | " + " | ".join(f"{g:.1f} GFLOP/s" for g in by_threads.values()) + " |"
              for name, by_threads in peaks.items()]
    lines += ["", "| kernel | case | threads | contender | median ms | GFLOP/s | vs torch | vs numpy | of FMA peak |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs_numpy = "" if r.vs_numpy is None else f"{r.vs_numpy:.2f}x"
        of_peak = "" if r.of_peak is None else f"{100 * r.of_peak:.0f}%"
        gflops = "" if r.gflops is None else f"{r.gflops:.1f}"
        lines.append(f"| {r.section} | {r.case} | {r.threads} | {r.contender} | {r.seconds * 1e3:.2f} | "
                     f"{gflops} | {r.vs_torch:.2f}x | {vs_numpy} | {of_peak} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per contender (medians)")
    parser.add_argument("--sections", nargs="+", choices=["gemm", "conv", "gn", "attention"],
                        default=["gemm", "conv", "gn", "attention"])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke test of seconds")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "kernels")
    args = parser.parse_args()
    if "cpp" not in md.available_backends():
        raise SystemExit(f"the C++ extension is unavailable: {md.backend.why_unavailable('cpp')}")
    # quick: one run after one warm-up, no inner repetition of short calls (a smoke test of the pipeline, not of
    # the speed)
    timing = dict(repeats=1, warmup=1, min_seconds=0.0) if args.quick else dict(repeats=args.repeats)
    machine = machine_report()
    kernel = micro_kernels()[-1]
    probe = FmaProbe(seconds=0.02 if args.quick else 0.2)
    probe.run(sorted({1, *args.threads}))
    machine["probe_parallel_efficiency"] = {t: probe.parallel_efficiency(kernel, t) for t in args.threads}
    busy = min(machine["probe_parallel_efficiency"].values()) < 0.9 or machine["load_average"][0] > 0.5
    print(f"load average {machine['load_average'][0]:.2f} on {machine['cores']} cores; FMA probe per thread on "
          + ", ".join(f"{t} threads: {100 * e:.0f}%" for t, e in machine["probe_parallel_efficiency"].items())
          + " of one" + ("  (busy: absolute times are noisy; quote the ratios of the same run)" if busy else ""),
          file=sys.stderr)
    rows = []
    if "gemm" in args.sections:
        rows += bench_gemm([128] if args.quick else [512, 1024], args.threads, timing, probe, kernel)
    if "conv" in args.sections:
        rows += bench_conv(QUICK_CONV_SHAPES if args.quick else CONV_SHAPES, args.threads, timing)
    if "gn" in args.sections:
        rows += bench_group_norm(QUICK_GN_SHAPES if args.quick else GN_SHAPES, args.threads, timing)
    if "attention" in args.sections:
        rows += bench_attention(QUICK_ATTENTION_SHAPES if args.quick else ATTENTION_SHAPES, args.threads, timing)
    peaks = probe.best
    table = markdown(rows, peaks, kernel, machine)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "fma_peak_gflops": peaks, "gemm_micro_kernel": kernel, "quick": args.quick,
              "rows": [asdict(r) for r in rows]}
    _write_atomically(args.out / "bench_kernels.md", lambda f: f.write(table.encode()))
    _write_atomically(args.out / "bench_kernels.json", lambda f: f.write(json.dumps(report, indent=1).encode()))
    print(f"written: {args.out / 'bench_kernels.md'}, {args.out / 'bench_kernels.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
