"""The autodiff's own cost: minidiff's Tensor/Function machinery against PyTorch eager, 1 and 2 threads.

    python benchmarks/bench_autodiff.py [--chain 100] [--hidden 64 256] [--batch 128] [--repeats 15]
                                        [--threads 1 2] [--profile]

Two measurements, each contender validated first against an independent float64 NumPy evaluation
(no contender is timed if it is wrong):
- overhead per op: a chain of small elementwise ops (mul, add, tanh, mul, repeated) on a 16-element
  float32 tensor, forward and backward, in microseconds per op. The arrays are tiny, so this is the
  framework's cost of recording one op and replaying its backward (Python dispatch, graph bookkeeping),
  not arithmetic. The goal (issue 3) is within 2x of PyTorch eager.
- a small MLP training step, float32: zero_grad, forward (Linear, SiLU, Linear, SiLU, Linear), MSE
  loss, backward, AdamW step; for each hidden width given.
Ratios are to PyTorch eager measured in the same run, interleaved; below 1 means faster than PyTorch.
--profile prints where minidiff's time goes in the chain (cProfile, by function).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import math
import pstats

import numpy as np
import torch
from _timing import interleaved_medians, pinned_threads, ratio_table

import minidiff.functional as F
from minidiff import nn, optim
from minidiff.autodiff import Tensor

TOLERANCE = 1e-4  # float32 contenders against the float64 reference, relative to the values' scale
A, B = 0.9, 0.1  # the chain's constants: each link is y <- tanh(A y + B) * 1


# --- overhead per op: a chain of tiny elementwise ops --------------------------------------------------


def chain_reference(x: np.ndarray, links: int) -> tuple[float, np.ndarray]:
    """sum(y_n) and its gradient with respect to x, for y_{k+1} = tanh(A y_k + B), y_0 = x, float64:
    d y_{k+1} / d y_k = A (1 - y_{k+1}^2), multiplied along the chain."""
    y, dy_dx = x.astype(np.float64), np.ones_like(x, dtype=np.float64)
    for _ in range(links):
        y = np.tanh(A * y + B)
        dy_dx = dy_dx * A * (1 - y * y)
    return float(y.sum()), dy_dx


def chain(x, links: int):
    """Four ops per link (mul, add, tanh, mul), the same code for minidiff and PyTorch tensors."""
    y = x
    for _ in range(links):
        y = (y * A + B).tanh() * 1.0
    return y.sum()


def chain_contenders(x: np.ndarray, links: int) -> dict:
    md_x = Tensor(x, requires_grad=True)
    torch_x = torch.tensor(x, requires_grad=True)

    def run_minidiff():
        md_x.grad = None
        loss = chain(md_x, links)
        loss.backward()
        return loss.item(), md_x.grad

    def run_torch():
        torch_x.grad = None
        loss = chain(torch_x, links)
        loss.backward()
        return loss.item(), torch_x.grad.numpy()

    return {"torch": run_torch, "minidiff": run_minidiff}


# --- a small MLP training step ----------------------------------------------------------------------------


def init_weights(rng: np.random.Generator, sizes: list[int]) -> dict[str, np.ndarray]:
    """PyTorch's default initialization, under the names of Sequential(Linear, SiLU, Linear, SiLU, Linear)."""
    weights = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        bound = 1 / math.sqrt(fan_in)
        weights[f"{2 * i}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        weights[f"{2 * i}.bias"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)
    return weights


def mlp_step_reference(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """Loss and gradients of one step in float64, the backward written out by hand:
    h_{i+1} = silu(h_i W_i^T + b_i) for the hidden layers, out = h W^T + b, loss = mean((out - y)^2)."""
    names = sorted({k.split(".")[0] for k in weights}, key=int)
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    hs, pres = [x.astype(np.float64)], []
    for i, name in enumerate(names):
        pre = hs[-1] @ w[f"{name}.weight"].T + w[f"{name}.bias"]  # (batch, out)
        pres.append(pre)
        hs.append(pre if i == len(names) - 1 else pre / (1 + np.exp(-pre)))
    diff = hs[-1] - y
    grad = 2 * diff / diff.size  # d loss / d out
    grads = {}
    for i in reversed(range(len(names))):
        if i < len(names) - 1:  # through silu: d/dpre = s (1 + pre (1 - s))
            s = 1 / (1 + np.exp(-pres[i]))
            grad = grad * s * (1 + pres[i] * (1 - s))
        grads[f"{names[i]}.weight"] = grad.T @ hs[i]
        grads[f"{names[i]}.bias"] = grad.sum(axis=0)
        grad = grad @ w[f"{names[i]}.weight"]
    return float(np.mean(diff * diff)), grads


def silu_mlp(linear, silu, sizes: list[int]) -> list:
    """The layers Linear, SiLU, ..., Linear through `sizes`, from either library's classes."""
    return [layer for fan_in, fan_out in itertools.pairwise(sizes) for layer in (linear(fan_in, fan_out), silu())][:-1]


def mlp_contenders(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict:
    """Each contender: one training step from its own copy of `weights`; returns (loss, gradients)."""
    sizes = [weights["0.weight"].shape[1]] + [weights[k].shape[0] for k in weights if k.endswith(".weight")]
    model = nn.Sequential(*silu_mlp(nn.Linear, nn.SiLU, sizes))
    model.load_state_dict(weights)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    md_x, md_y = Tensor(x), Tensor(y)

    twin = torch.nn.Sequential(*silu_mlp(torch.nn.Linear, torch.nn.SiLU, sizes))
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    torch_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    torch_x, torch_y = torch.from_numpy(x), torch.from_numpy(y)

    def run_minidiff():
        opt.zero_grad()
        loss = F.mse_loss(model(md_x), md_y)
        loss.backward()
        opt.step()
        return loss.item(), {k: p.grad for k, p in model.named_parameters()}

    def run_torch():
        torch_opt.zero_grad()
        loss = torch.nn.functional.mse_loss(twin(torch_x), torch_y)
        loss.backward()
        torch_opt.step()
        return loss.item(), {k: p.grad.numpy() for k, p in twin.named_parameters()}

    return {"torch": run_torch, "minidiff": run_minidiff}


# --- validation, timing, report ----------------------------------------------------------------------------


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30)) if expected.size else 0.0


def validate(what: str, contenders: dict, expected_loss: float, expected_grads) -> None:
    """Refuse to time a contender whose loss or gradients are off (first call, before any update)."""
    for name, fn in contenders.items():
        loss, grads = fn()
        pairs = [(loss, expected_loss)]
        pairs += [(grads[k], g) for k, g in expected_grads.items()] if isinstance(expected_grads, dict) \
            else [(grads, expected_grads)]
        worst = max(relative_error(got, want) for got, want in pairs)
        if worst > TOLERANCE:
            raise SystemExit(f"{what}: {name} is wrong (relative error {worst:.2e}): not timing it")


def profile_chain(x: np.ndarray, links: int, calls: int = 300) -> None:
    run = chain_contenders(x, links)["minidiff"]
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [run() for _ in range(calls)])
    print(f"where minidiff's time goes: {calls} chains of {4 * links} ops, forward + backward (cProfile)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=int, default=100, help="ops in the chain (a multiple of 4)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256], help="MLP hidden widths")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    links = max(1, args.chain // 4)
    x = rng.uniform(-1, 1, 16).astype(np.float32)
    chains = chain_contenders(x, links)
    validate("chain", chains, *chain_reference(x, links))
    mlps = {}
    for hidden in args.hidden:
        weights = init_weights(rng, [2, hidden, hidden, 2])
        batch_x = rng.standard_normal((args.batch, 2)).astype(np.float32)
        batch_y = np.tanh(batch_x[:, ::-1]).copy()
        mlps[hidden] = mlp_contenders(weights, batch_x, batch_y)
        validate(f"MLP step (hidden {hidden})", mlps[hidden], *mlp_step_reference(weights, batch_x, batch_y))

    for threads in args.threads:
        with pinned_threads(threads):
            medians = interleaved_medians(chains, args.repeats)
            per_op = {name: seconds / (4 * links) for name, seconds in medians.items()}
            print(ratio_table(f"overhead per op: chain of {4 * links} elementwise ops on 16 float32, forward + "
                              f"backward, {threads} thread(s) (time per op)", per_op) + "\n")
            for hidden, contenders in mlps.items():
                medians = interleaved_medians(contenders, args.repeats)
                print(ratio_table(f"MLP training step: 2-{hidden}-{hidden}-2, batch {args.batch}, float32, "
                                  f"AdamW, {threads} thread(s)", medians) + "\n")
    if args.profile:
        profile_chain(x, links)


if __name__ == "__main__":
    main()
