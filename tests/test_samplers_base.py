"""What every sampler shares: the timestep spacings against diffusers' own, dynamic thresholding against
its definition, and the checks of the configuration boundary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff.samplers import base, from_config, registry
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


SAVED_CONFIGS = {
    "DDPMScheduler": {"variance_type": "fixed_large", "clip_sample": False, "timestep_spacing": "trailing"},
    "DDIMScheduler": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
                      "set_alpha_to_one": False, "prediction_type": "v_prediction"},
    "DPMSolverMultistepScheduler": {"solver_order": 3, "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    "EulerDiscreteScheduler": {"timestep_spacing": "leading", "steps_offset": 1, "rescale_betas_zero_snr": True,
                               "prediction_type": "v_prediction"},
    "HeunDiscreteScheduler": {"beta_schedule": "squaredcos_cap_v2", "clip_sample": True},
    "EulerAncestralDiscreteScheduler": {"timestep_spacing": "trailing", "beta_schedule": "scaled_linear"},
    "FlowMatchEulerDiscreteScheduler": {"shift": 3.0},
}


@pytest.mark.torch
@pytest.mark.parametrize("class_name", list(SAVED_CONFIGS))
def test_scheduler_config_json_as_save_pretrained_writes_it(class_name, tmp_path):
    """A diffusers scheduler saved with save_pretrained (every key, _class_name and _diffusers_version
    included) is read by `minidiff.samplers.from_config` into the matching sampler, whose run has the
    scheduler's timesteps (minidiff's t = diffusers' k + 1; flow times are diffusers' timesteps / 1000)."""
    import json

    import diffusers

    scheduler = getattr(diffusers, class_name)(**SAVED_CONFIGS[class_name])
    scheduler.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert config["_class_name"] == class_name and "_diffusers_version" in config
    sampler = from_config(config)
    assert type(sampler).__name__ == registry.DIFFUSERS_CLASSES[class_name][1]
    scheduler.set_timesteps(12)
    sampler.set_timesteps(12)
    expected = scheduler.timesteps.numpy().astype(np.float64)
    expected = expected / 1000.0 if class_name.startswith("FlowMatch") else expected + 1.0
    np.testing.assert_allclose(sampler.timesteps, expected, rtol=3e-4)


@pytest.mark.parametrize(("key", "value"), [("timestep_spacing", "fancy"), ("beta_schedule", "exp"),
                                            ("prediction_type", "flow"), ("trained_betas", "0.1")])
def test_config_values_minidiff_does_not_implement_are_refused_by_key(key, value):
    with pytest.raises((ValueError, TypeError), match=key):
        from_config({"_class_name": "DDIMScheduler", key: value})


def test_unknown_config_key_is_refused_by_name():
    with pytest.raises(ValueError, match="guidance_rescale"):
        from_config({"_class_name": "DDIMScheduler", "guidance_rescale": 0.7})


def test_plain_progress_without_tqdm_reports_known_and_unknown_totals(monkeypatch, capsys):
    """Without tqdm, progress is a line on stderr every tenth of a known total, every 100 items otherwise."""
    import sys

    from minidiff.progress import progress

    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert list(progress(range(20), 20, "known")) == list(range(20))
    assert list(progress(iter(range(250)), None, "open")) == list(range(250))
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["known: 2/20", "known: 4/20"] and err[9] == "known: 20/20"
    assert err[10:] == ["open: 100/?", "open: 200/?"]
