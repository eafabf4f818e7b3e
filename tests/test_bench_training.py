"""benchmarks/bench_training.py validates before it times: every contender's first training step (loss and
every parameter gradient) must match diffusers' UNet2DModel in float64 on the same batch and weights, or the
benchmark stops naming it. These tests check that the real contenders pass on the tiny config, that subtly
wrong ones (diffusers' t - 1 convention, another group count, a summed loss) are refused, the exact property
behind the key-bias gradient's scale, and a lower bound of the memory probe.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench = importlib.import_module("bench_training")

CONFIG = "tiny"


@pytest.fixture(scope="module")
def tiny():
    return bench.setup(CONFIG)


def test_real_contenders_match_the_float64_twin(tiny):
    """[E46] torch float32 and minidiff on each backend: the first step's loss and gradients within TOLERANCE."""
    config, weights, batch = tiny
    contenders = {name: bench.make_step(name, config, weights, batch) for name in bench.contender_names()}
    assert {"torch", "minidiff-numpy"} <= set(contenders)
    worst = bench.validate(CONFIG, contenders, config, weights, batch)
    assert set(worst) == set(contenders)


def test_refuses_diffusers_timestep_convention(tiny):
    """The same network called with k = t - 1 (diffusers' index) instead of t: another embedding, refused."""
    config, weights, batch = tiny
    shifted = replace(batch, t=batch.t - 1)
    contenders = {"minidiff-numpy": bench.minidiff_step(config, weights, shifted, "numpy")}
    with pytest.raises(SystemExit, match="minidiff-numpy is wrong"):
        bench.validate(CONFIG, contenders, config, weights, batch)


def test_refuses_another_group_count(tiny):
    """norm_num_groups 8 for 4: the same parameter shapes, other normalization statistics, refused."""
    config, weights, batch = tiny
    other = replace(config, unet={**config.unet, "norm_num_groups": 8})
    contenders = {"minidiff-numpy": bench.minidiff_step(other, weights, batch, "numpy")}
    with pytest.raises(SystemExit, match="minidiff-numpy is wrong"):
        bench.validate(CONFIG, contenders, config, weights, batch)


def test_refuses_a_summed_loss(tiny, monkeypatch):
    """L_simple summed over the elements rather than averaged: the loss and every gradient scaled, refused."""
    config, weights, batch = tiny
    mean_loss = bench.F.mse_loss
    monkeypatch.setattr(bench.F, "mse_loss", lambda p, t: mean_loss(p, t, reduction="sum"))
    contenders = {"minidiff-numpy": bench.minidiff_step(config, weights, batch, "numpy")}
    with pytest.raises(SystemExit, match="minidiff-numpy is wrong"):
        bench.validate(CONFIG, contenders, config, weights, batch)


def test_key_bias_gradient_is_exactly_zero(tiny):
    """Why gradient_errors scales a bias by its layer's weight gradient: softmax(q . (k + b_k)) does not
    depend on b_k (a shift of every score of a query by q . b_k), so the float64 twin's key-bias gradient is
    rounding noise, far below its layer's weight gradient."""
    config, weights, batch = tiny
    _, grads = bench.torch_step(config, weights, batch, torch.float64)()
    key_biases = [k for k in grads if k.endswith("to_k.bias")]
    assert key_biases
    for key in key_biases:
        weight_scale = np.abs(grads[key.replace(".bias", ".weight")]).max()
        assert np.abs(grads[key]).max() <= 1e-12 * weight_scale, key


def test_traced_peak_holds_every_gradient(tiny):
    """At the end of backward every parameter's gradient is alive at once (zero_grad dropped the previous
    ones), so tracemalloc's peak over a minidiff step is at least the parameters' bytes."""
    _, weights, _ = tiny
    memory = bench.probe_memory(CONFIG, "minidiff-numpy", threads=1)
    assert memory["traced_step"] >= bench.parameter_mib(weights)
    assert memory["rss_first_step"] >= 0

