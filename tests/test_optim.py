"""minidiff.optim: SGD, Adam and AdamW step for step against torch.optim (float64, 100 steps) and
against closed forms; gradient clipping against torch.nn.utils.clip_grad_norm_; learning-rate
schedules against their closed forms; the EMA against its recurrence; state dicts that resume a run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tolerances import OPTIMIZER_STEPS, assert_close

from minidiff import checkpoint, nn, optim

SHAPES = [(3, 4), (5,), ()]


def make_params(seed: int = 0) -> list[nn.Parameter]:
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(shape)) for shape in SHAPES]


def gradient(p: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """A gradient that depends on the parameter (so a wrong update changes later gradients) plus noise:
    that of sum(p^4 / 40 - p^2 / 2) plus noise."""
    return np.asarray(0.1 * p**3 - p + noise)


def skipped(step: int, i: int) -> bool:
    """Parameter 1 gets no gradient on some steps: its state must not advance (PyTorch skips it)."""
    return i == 1 and step % 7 == 3


# (minidiff class, torch class name, hyperparameters, param-group split) ; a split gives the second group
# (parameters 1 and 2) its own hyperparameters.
CONFIGS = {
    "sgd": (optim.SGD, "SGD", dict(lr=0.05), None),
    "sgd_momentum_dampening_wd": (optim.SGD, "SGD", dict(lr=0.03, momentum=0.9, dampening=0.3, weight_decay=0.1),
                                  None),
    "sgd_nesterov_groups": (optim.SGD, "SGD", dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.05),
                            dict(lr=0.01, momentum=0.5)),
    "adam": (optim.Adam, "Adam", dict(lr=0.01), None),
    "adam_l2_betas": (optim.Adam, "Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), None),
    "adamw": (optim.AdamW, "AdamW", dict(lr=0.01), None),
    "adamw_groups": (optim.AdamW, "AdamW", dict(lr=0.02, weight_decay=0.3), dict(weight_decay=0.0, lr=0.005)),
}


def grouped(params, hyper, split):
    return params if split is None else [{"params": params[:1]}, {"params": params[1:], **split}]


@pytest.mark.torch
@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimizer_matches_torch_step_for_step(name):
    import torch

    cls, torch_name, hyper, split = CONFIGS[name]
    ours = make_params()
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt = cls(grouped(ours, hyper, split), **hyper)
    torch_opt = getattr(torch.optim, torch_name)(grouped(theirs, hyper, split), **hyper)
    rng = np.random.default_rng(1)
    for step in range(100):
        for i, (p, t) in enumerate(zip(ours, theirs, strict=True)):
            noise = rng.standard_normal(p.shape)
            p.grad = None if skipped(step, i) else gradient(p.data, noise)
            t.grad = None if skipped(step, i) else torch.from_numpy(gradient(t.detach().numpy(), noise))
        opt.step()
        torch_opt.step()
        for i, (p, t) in enumerate(zip(ours, theirs, strict=True)):
            assert_close(p.data, t.detach().numpy(), tol=OPTIMIZER_STEPS, what=f"{name} step {step} param {i}")
    for p, t in zip(ours, theirs, strict=True):  # the optimizer state too, e.g. Adam's per-parameter step count
        for key, value in opt.state.get(p, {}).items():
            expected = torch_opt.state[t][key]
            assert_close(np.asarray(value, np.float64), np.asarray(expected, np.float64), tol=OPTIMIZER_STEPS,
                         what=f"{name} state {key}")


def test_sgd_momentum_closed_form_under_a_constant_gradient():
    """With dampening 0 and a constant gradient g, the buffer after k steps is g (1 - mu^k) / (1 - mu), so
    p_k = p_0 - lr g sum_{j=1..k} (1 - mu^j) / (1 - mu)."""
    p = nn.Parameter(np.array([1.0, -2.0]))
    g, lr, mu = np.array([0.5, 0.25]), 0.1, 0.9
    opt = optim.SGD([p], lr=lr, momentum=mu)
    for _ in range(20):
        p.grad = g
        opt.step()
    expected = np.array([1.0, -2.0]) - lr * g * sum((1 - mu**j) / (1 - mu) for j in range(1, 21))
    assert_close(p.data, expected)


def test_adam_first_step_moves_each_coordinate_by_lr_against_its_gradients_sign():
    """Bias correction makes the first update lr g / |g| (eps = 0) whatever the gradient's scale."""
    p = nn.Parameter(np.array([0.0, 0.0, 0.0]))
    p.grad = np.array([1e-3, -50.0, 7.0])
    optim.Adam([p], lr=0.1, eps=0.0).step()
    assert_close(p.data, -0.1 * np.sign(p.grad))


def test_adamw_with_zero_gradients_only_decays_the_weights():
    """m = v = 0, so the Adam part is 0 / eps = 0 and p_k = p_0 (1 - lr wd)^k; Adam's L2 form would move."""
    p = nn.Parameter(np.array([2.0, -1.0]))
    opt = optim.AdamW([p], lr=0.01, weight_decay=0.5)
    for _ in range(30):
        p.grad = np.zeros(2)
        opt.step()
    assert_close(p.data, np.array([2.0, -1.0]) * (1 - 0.01 * 0.5) ** 30)


def test_optimizers_reject_bad_arguments():
    p = make_params()
    for kwargs, match in [(dict(lr=-1.0), "lr"), (dict(momentum=-0.1), "momentum"),
                          (dict(nesterov=True), "nesterov"), (dict(momentum=0.9, nesterov=True, dampening=0.1),
                                                              "nesterov"), (dict(weight_decay=-1), "weight_decay")]:
        with pytest.raises(ValueError, match=match):
            optim.SGD(p, **kwargs)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        optim.AdamW(p, eps=-1e-8)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(ValueError, match="appears twice"):
        optim.Adam([p[0], p[0]])
    with pytest.raises(TypeError, match="leaf tensors"):
        optim.Adam([p[0] * 2])
    with pytest.raises(TypeError, match="iterable"):
        optim.Adam(p[0])
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        optim.Adam([{"params": p, "momentum": 0.9}])


def test_zero_grad_clears_every_parameter():
    p = make_params()
    for q in p:
        q.grad = np.ones(q.shape)
    optim.SGD(p, lr=0.1).zero_grad()
    assert all(q.grad is None for q in p)


# --- state dicts: a run resumed from a checkpoint is the run that was never interrupted --------------------


def run_steps(opt, params, steps, seed):
    rng = np.random.default_rng(seed)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if skipped(step, i) else gradient(p.data, rng.standard_normal(p.shape))
        opt.step()


@pytest.mark.parametrize("name", ["sgd_nesterov_groups", "adam_l2_betas", "adamw_groups"])
def test_state_dict_resumes_a_run_exactly_through_a_checkpoint_file(name, tmp_path):
    cls, _, hyper, split = CONFIGS[name]
    params = make_params()
    opt = cls(grouped(params, hyper, split), **hyper)
    run_steps(opt, params, 5, seed=1)
    path = checkpoint.save(opt.state_dict(), tmp_path / "optimizer.safetensors")
    weights = [p.data.copy() for p in params]
    run_steps(opt, params, 6, seed=2)

    resumed = [nn.Parameter(w) for w in weights]
    other = dict(hyper, lr=123.0)  # the saved hyperparameters replace the constructor's
    opt2 = cls(grouped(resumed, other, split), **other)
    opt2.load_state_dict(checkpoint.load(path))
    run_steps(opt2, resumed, 6, seed=2)
    for p, q in zip(params, resumed, strict=True):
        assert np.array_equal(p.data, q.data)


def test_optimizer_load_state_dict_checks_keys_shapes_and_values():
    params = make_params()
    adam = optim.Adam(params, lr=0.01)
    run_steps(adam, params, 2, seed=0)
    state = adam.state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys: param_groups\.0\.betas"):
        optim.SGD(make_params(), lr=0.1).load_state_dict(state)
    bad = dict(state, **{"state.0.exp_avg": np.zeros((4, 3))})
    with pytest.raises(ValueError, match=r"state.0.exp_avg: expected shape \(3, 4\), got \(4, 3\)"):
        optim.Adam(make_params()).load_state_dict(bad)
    with pytest.raises(ValueError, match=r"missing keys: param_groups\.0\.lr"):
        optim.Adam(make_params()).load_state_dict({k: v for k, v in state.items() if k != "param_groups.0.lr"})
    with pytest.raises(ValueError, match="lr"):
        optim.Adam(make_params()).load_state_dict(dict(state, **{"param_groups.0.lr": np.array(-1.0)}))
    fresh = optim.Adam(make_params(), lr=1)  # an int lr is saved and loaded as a float
    fresh.load_state_dict({k: v for k, v in state.items() if k.startswith("param_groups")})  # no state yet: fine
    assert fresh.state == {} and fresh.param_groups[0]["lr"] == 0.01
    optim.Adam(make_params()).load_state_dict(optim.Adam(make_params(), lr=1).state_dict())


# --- gradient clipping ------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    import torch

    rng = np.random.default_rng(0)
    params = make_params() + [nn.Parameter(np.zeros(2))]  # the last has no gradient
    theirs = [torch.tensor(p.data, requires_grad=True) for p in params]
    for p, t in zip(params[:-1], theirs[:-1], strict=True):
        p.grad = np.asarray(rng.standard_normal(p.shape) * 3)
        t.grad = torch.from_numpy(p.grad.copy())
    total = optim.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert_close(np.float64(total), expected.numpy())
    for p, t in zip(params, theirs, strict=True):
        assert (p.grad is None) == (t.grad is None)
        if p.grad is not None:
            assert_close(p.grad, t.grad.numpy())


@given(st.floats(0.01, 100.0), st.integers(0, 2**32 - 1))
def test_clipping_caps_the_total_norm_and_keeps_the_direction(max_norm, seed):
    rng = np.random.default_rng(seed)
    params = make_params(seed % 7)
    grads = [rng.standard_normal(p.shape) * rng.uniform(0.01, 10) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.copy()
    total = optim.clip_grad_norm_(params, max_norm)
    assert_close(np.float64(total), np.sqrt(sum(np.sum(g * g) for g in grads)))
    factor = min(1.0, max_norm / (total + 1e-6))
    for p, g in zip(params, grads, strict=True):
        assert_close(p.grad, g * factor)
    assert math.sqrt(sum(np.sum(p.grad**2) for p in params)) <= max_norm * (1 + 1e-12) or factor == 1.0


@pytest.mark.torch
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clipping_a_nan_or_inf_norm_matches_torch(norm_type, bad):
    """torch multiplies by min(1, max_norm / (total + 1e-6)) unconditionally: a NaN norm makes every gradient
    NaN, an infinite one zeroes the finite entries; the returned total is NaN or inf."""
    import torch

    grads = [np.array([bad, 1.0, -2.0]), np.array([[3.0, 0.5]])]
    params = [nn.Parameter(np.zeros(g.shape)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, t, g in zip(params, theirs, grads, strict=True):
        p.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
    total = optim.clip_grad_norm_(params, 1.0, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type=norm_type)
    np.testing.assert_array_equal(np.float64(total), expected.numpy())
    for p, t in zip(params, theirs, strict=True):
        np.testing.assert_array_equal(p.grad, t.grad.numpy())  # NaNs in the same places


def test_clipping_a_non_finite_norm():
    p = nn.Parameter(np.ones(2))
    p.grad = np.array([np.inf, 1.0])
    with pytest.raises(RuntimeError, match=r"total 2\.0-norm of the gradients is inf"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_grad_norm_([p], 1.0, norm_type=0)
    assert optim.clip_grad_norm_([nn.Parameter(np.ones(2))], 1.0) == 0.0


# --- learning-rate schedules ------------------------------------------------------------------------------


def test_linear_warmup_closed_form():
    warmup = optim.LinearWarmup(4)
    assert [warmup(k) for k in range(7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]


@given(st.integers(1, 500), st.floats(0.0, 1.0))
def test_cosine_decay_closed_form(total, min_factor):
    cos = optim.CosineDecay(total, min_factor)
    assert cos(0) == 1.0
    assert_close(np.float64(cos(total)), np.float64(min_factor))
    assert cos(total + 10) == cos(total)
    for k in range(0, total + 1, max(1, total // 17)):
        # symmetry about the midpoint: f(k) + f(T - k) = 1 + min_factor
        assert_close(np.float64(cos(k) + cos(total - k)), np.float64(1 + min_factor))
        assert_close(np.float64(cos(k)), np.float64(min_factor + (1 - min_factor) * math.cos(math.pi * k / total / 2)
                                                    ** 2))
    values = [cos(k) for k in range(total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(values)), "monotone non-increasing"


def test_warmup_cosine_joins_the_two_pieces():
    sched = optim.WarmupCosine(warmup_steps=10, total_steps=110, min_factor=0.1)
    assert [sched(k) for k in range(10)] == [(k + 1) / 10 for k in range(10)]
    assert sched(10) == 1.0
    assert_close(np.float64(sched(60)), np.float64(0.55))  # halfway down: (1 + 0.1) / 2
    assert_close(np.float64(sched(110)), np.float64(0.1))
    with pytest.raises(ValueError, match="total_steps"):
        optim.WarmupCosine(10, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.LinearWarmup(0)
    with pytest.raises(ValueError, match="min_factor"):
        optim.CosineDecay(10, 1.5)


@pytest.mark.torch
def test_schedules_match_torch_schedulers():
    """LinearWarmup is LinearLR(1/W, 1, W-1); CosineDecay is CosineAnnealingLR(T, eta_min) up to step T
    (after T torch's recursion climbs back up, CosineDecay stays at min_factor); through LRScheduler every
    param group's lr follows base_lr * factor."""
    import torch

    for ours_schedule, make_theirs in [
        (optim.LinearWarmup(5), lambda o: torch.optim.lr_scheduler.LinearLR(o, 1 / 5, 1.0, total_iters=4)),
        (optim.CosineDecay(30, 0.2), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 30, eta_min=0.2 * 0.4)),
    ]:
        params = make_params()
        opt = optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], lr=0.4)
        sched = optim.LRScheduler(opt, ours_schedule)
        t = torch.zeros(1, requires_grad=True)
        torch_opt = torch.optim.SGD([{"params": [t]}], lr=0.4)
        torch_sched = make_theirs(torch_opt)
        for _ in range(31):
            assert_close(np.float64(sched.get_last_lr()[0]), np.float64(torch_sched.get_last_lr()[0]))
            assert_close(np.float64(sched.get_last_lr()[1]), np.float64(0.1 * ours_schedule(sched.last_step)))
            opt.step()
            sched.step()
            torch_opt.step()
            torch_sched.step()


def test_lr_scheduler_state_dict_resumes():
    opt = optim.Adam(make_params(), lr=0.01)
    sched = optim.LRScheduler(opt, optim.WarmupCosine(3, 20))
    for _ in range(7):
        sched.step()
    opt2 = optim.Adam(make_params(), lr=0.01)
    sched2 = optim.LRScheduler(opt2, optim.WarmupCosine(3, 20))
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_step == 7 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.01 * sched.schedule(7)
    with pytest.raises(ValueError, match="base_lrs"):
        sched2.load_state_dict({"last_step": np.array(1), "base_lrs": np.array([0.1, 0.2])})


# --- EMA ------------------------------------------------------------------------------------------------


class WithBuffer(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.fc = nn.Linear(3, 2, rng=rng, dtype=np.float64)
        self.register_buffer("seen", np.zeros((), np.int64))


def test_ema_follows_its_recurrence():
    rng = np.random.default_rng(0)
    model = WithBuffer(rng)
    decay = 0.9
    ema = optim.EMA(model, decay=decay)
    expected = {k: v.copy() for k, v in model.state_dict().items()}
    for k in range(25):
        for p in model.parameters():
            p.data[...] = rng.standard_normal(p.shape)
        model.seen = np.array(k + 1, np.int64)
        ema.update(model)
        for name in ("fc.weight", "fc.bias"):
            expected[name] = decay * expected[name] + (1 - decay) * model.state_dict()[name]
    for name in ("fc.weight", "fc.bias"):
        assert_close(ema.state_dict()[name], expected[name])
    assert ema.state_dict()["seen"] == 25, "buffers are copied, not averaged"


def test_ema_warmup_ramps_the_decay_as_diffusers_emamodel():
    """With warmup, update k (from 0) uses d_k = min(decay, (1 + k) / (10 + k)): 0.1, 2/11, 3/12, ... until it
    reaches decay (0.9 here from k = 80). Weights held at w: s_K = w + prod_k d_k (s_0 - w)."""
    rng = np.random.default_rng(2)
    model = WithBuffer(rng)
    s0 = model.state_dict()
    ema = optim.EMA(model, decay=0.9, warmup=True)
    w = {name: rng.standard_normal(p.shape) for name, p in model.named_parameters()}
    model.load_state_dict({**w, "seen": np.zeros((), np.int64)})
    decays = [min(0.9, (1 + k) / (10 + k)) for k in range(100)]
    assert decays[0] == 0.1 and decays[79] < 0.9 == decays[80]
    for k in range(100):
        assert ema.current_decay() == decays[k]
        ema.update(model)
    assert ema.num_updates == 100
    for name in w:
        assert_close(ema.state_dict()[name], w[name] + np.prod(decays) * (s0[name] - w[name]), what=name)


def test_ema_of_constant_weights_closed_form_and_copy_to():
    """Weights held at w from shadow s_0: s_k = w + decay^k (s_0 - w)."""
    rng = np.random.default_rng(1)
    model = WithBuffer(rng)
    s0 = model.state_dict()
    w = {name: rng.standard_normal(p.shape) for name, p in model.named_parameters()}
    model.load_state_dict({**w, "seen": np.zeros((), np.int64)})
    ema = optim.EMA(WithBuffer(rng), decay=0.95)
    ema.load_state_dict(s0)
    for _ in range(40):
        ema.update(model)
    target = WithBuffer(rng)
    ema.copy_to(target)
    for name in w:
        assert_close(target.state_dict()[name], w[name] + 0.95**40 * (s0[name] - w[name]))
    with pytest.raises(ValueError, match="decay"):
        optim.EMA(model, decay=1.5)
    with pytest.raises(ValueError, match="differs"):
        ema.update(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"fc\.bias: expected shape"):
        ema.load_state_dict({**s0, "fc.bias": np.zeros(3)})
