"""What every sampler shares: the timestep spacings against diffusers' own, dynamic thresholding against
its definition, and the checks of the configuration boundary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff.samplers import base, from_config
from minidiff.samplers.base import dynamic_threshold, spaced_timesteps


@pytest.mark.torch
@pytest.mark.parametrize("spacing", base.TIMESTEP_SPACINGS)
@pytest.mark.parametrize(("T", "n", "offset"), [(1000, 10, 0), (1000, 7, 1), (1000, 1000, 0), (50, 49, 1), (10, 3, 0)])
def test_spacings_are_diffusers_timesteps_plus_one(spacing, T, n, offset):
    """diffusers' DDPMScheduler spaces its k = 0..T-1; minidiff's t = k + 1, the same steps of the chain."""
    import diffusers
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    scheduler.set_timesteps(n)
    expected = scheduler.timesteps.numpy().astype(np.int64) + 1
    got = spaced_timesteps(spacing, T, n, offset if spacing == "leading" else 0)
    np.testing.assert_array_equal(got, expected)


@given(T=st.integers(1, 2000), data=st.data())
def test_spacings_are_strictly_decreasing_steps_of_the_chain(T, data):
    n = data.draw(st.integers(1, T))
    spacing = data.draw(st.sampled_from(base.TIMESTEP_SPACINGS))
    t = spaced_timesteps(spacing, T, n)
    assert t.shape == (n,) and t.dtype == np.int64
    assert np.all(np.diff(t) < 0) and t.min() >= 1 and t.max() <= T
    if spacing != "leading" and n >= 2:
        assert t[0] == T  # linspace and trailing start from pure noise (Lin et al. 2023)


def test_steps_offset_that_leaves_the_chain_is_refused():
    with pytest.raises(ValueError, match="steps_offset"):
        spaced_timesteps("leading", 10, 10, steps_offset=1)


def test_dynamic_thresholding_follows_its_definition():
    """Imagen's rule by hand: per example s = clip(quantile_p |x0|, 1, max); x0 -> clip(x0, -s, s) / s."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 2, 5, 5)) * np.array([0.5, 2.0, 9.0])[:, None, None, None]
    out = dynamic_threshold(x0, 0.9, 4.0)
    for i in range(3):
        s = min(max(np.quantile(np.abs(x0[i]), 0.9), 1.0), 4.0)
        np.testing.assert_allclose(out[i], np.clip(x0[i], -s, s) / s, rtol=1e-15)
    np.testing.assert_array_equal(out[0], np.clip(x0[0], -1, 1))  # a small example has s = 1: a plain clip
    assert np.abs(out).max() <= 1.0


def test_from_config_needs_a_known_class_name():
    with pytest.raises(ValueError, match="_class_name"):
        from_config({"num_train_timesteps": 10})
    with pytest.raises(ValueError, match="_class_name: minidiff implements"):
        from_config({"_class_name": "LCMScheduler"})
    with pytest.raises(TypeError, match="config"):
        from_config([("_class_name", "DDIMScheduler")])
