"""minidiff.train: every objective's loss against the Gaussian-data oracle and against its targets and
min-SNR weights written out from the forward process; training reaches the optimum of E15; a run interrupted
(Ctrl-C, a KeyboardInterrupt from the model or a callback) and resumed follows the uninterrupted loss curve
bit for bit; warmup, EMA, the CSV log and the time budget by their definitions; corrupt, truncated and
mismatched checkpoints refused with nothing overwritten."""

from __future__ import annotations

import csv
import os
import signal

import numpy as np
import pytest
from models import mlp
from tolerances import assert_close

import minidiff.functional as F
from minidiff import nn
from minidiff.autodiff import Tensor
from minidiff.diffusion import named_betas
from minidiff.train import LOG_COLUMNS, TrainConfig, Trainer, load_checkpoint

MU, S = np.array([0.5, -1.0]), np.array([0.5, 2.0])  # Gaussian data: mean and standard deviation per dimension


# --- small models and data ---------------------------------------------------------------------------------


class TinyDenoiser(nn.Module):
    """(x (B, 2), t, labels) -> (B, 2): an MLP of [x, t / time_scale] plus a label embedding, with dropout
    drawn from the model's own generator (which a checkpoint must carry)."""

    def __init__(self, rng, hidden=16, num_classes=4, time_scale=50.0, dropout=0.1, with_config=True):
        super().__init__()
        if with_config:
            self.config = {"hidden": hidden, "num_classes": num_classes}
        self.time_scale, self.dropout, self.rng = time_scale, dropout, rng
        self.net = mlp(rng, sizes=(3, hidden, hidden, 2))
        self.labels = nn.Parameter(0.1 * rng.standard_normal((num_classes, 2)))

    def forward(self, x, t, class_labels=None):
        time = Tensor((np.asarray(t, np.float64) / self.time_scale)[:, None])  # (B, 1)
        h = F.dropout(F.concat([x, time], axis=1), self.dropout, self.training, self.rng)  # (B, 3)
        out = self.net(h)  # (B, 2)
        return out if class_labels is None else out + F.embedding(class_labels, self.labels)


class PerStepAffine(nn.Module):
    """model(x, t) = scale[t] * x + shift[t]: affine in x for each t, so it can be E[target | x_t] exactly."""

    def __init__(self, T, dim=2):
        super().__init__()
        self.scale = nn.Parameter(np.zeros((T + 1, dim)))
        self.shift = nn.Parameter(np.zeros((T + 1, dim)))

    def forward(self, x, t):
        return F.embedding(t, self.scale) * x + F.embedding(t, self.shift)  # (B, dim)


class Recorder(nn.Module):
    """Outputs 0 * x (a zero prediction with a gradient) and records what it was called with."""

    def __init__(self):
        super().__init__()
        self.zero = nn.Parameter(np.zeros(1))
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append((x.data.copy(), np.array(t), class_labels))
        return x * self.zero


class Oracle(nn.Module):
    """E[target | x_t] of Gaussian data for an objective (see `moments`), times a parameter equal to 1."""

    def __init__(self, objective, alpha_bars):
        super().__init__()
        self.objective, self.alpha_bars = objective, alpha_bars
        self.one = nn.Parameter(np.ones(1))

    def forward(self, x, t):
        mean_target, cov, _, mean_x, var_x = moments(self.objective, self.alpha_bars, t)
        return Tensor(mean_target + cov / var_x * (x.data - mean_x)) * self.one


class GaussianLoader:
    """A loader of fresh N(MU, S^2) batches, one batch an epoch, with its generator as its state."""

    def __init__(self, batch, seed=0):
        self.batch, self.rng = batch, np.random.default_rng(seed)

    def __iter__(self):
        yield MU + S * self.rng.standard_normal((self.batch, 2))

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def alpha_bars_of(schedule, T):
    """alpha_bar_t for t = 0..T as the running product of 1 - beta_t."""
    return np.cumprod(np.concatenate(([1.0], 1.0 - named_betas(schedule, T))))


def moments(objective, alpha_bars, t):
    """Gaussian conditioning for data N(MU, S^2) per dimension: (E target, Cov(target, x_t), Var target,
    E x_t, Var x_t) at times t (B,), shaped (B, 2). VP: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, targets eps, x0,
    v = sqrt(ab) eps - sqrt(1 - ab) x0. Flow: x_t = (1 - t) x0 + t eps, target eps - x0."""
    if objective == "flow":
        s = np.asarray(t, np.float64)[:, None]
        return -MU, s - (1 - s) * S**2, 1 + S**2, (1 - s) * MU, (1 - s) ** 2 * S**2 + s**2
    ab = alpha_bars[np.asarray(t)][:, None]
    a, b = np.sqrt(ab), np.sqrt(1 - ab)
    mean_x, var_x = a * MU, ab * S**2 + 1 - ab
    table = {"epsilon": (0 * MU, b, 1.0),
             "sample": (MU, a * S**2, S**2),
             "v_prediction": (-b * MU, a * b * (1 - S**2), ab + (1 - ab) * S**2)}
    mean_target, cov, var_target = table[objective]
    return mean_target, cov, var_target, mean_x, var_x


def expected_minimum(objective, alpha_bars, T):
    """E_t of the least mean squared error, Var(target) - Cov^2 / Var(x_t), averaged over dimensions:
    t uniform on 1..T (VP), or on [0, 1) (flow: a midpoint rule on 10^5 points)."""
    t = (np.arange(100_000) + 0.5) / 100_000 if objective == "flow" else np.arange(1, T + 1)
    _, cov, var_target, _, var_x = moments(objective, alpha_bars, t)
    return float(np.mean(var_target - cov**2 / var_x))


def config(**changes):
    base = dict(objective="epsilon", num_train_timesteps=50, batch_size=8, lr=0.01, warmup_steps=3, ema_decay=0.9,
                steps=30, checkpoint_every=5, log_every=1, seed=3)
    return TrainConfig(**{**base, **changes})


def labeled_data(n=50, seed=1):
    rng = np.random.default_rng(seed)
    return MU + S * rng.standard_normal((n, 2)), rng.integers(0, 3, n)


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def files_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- objectives ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["epsilon", "sample", "v_prediction", "flow"])
def test_E15_E38_oracle_model_reaches_the_known_minimum_loss(objective, tmp_path):
    """With E[target | x_t] as the model, the mean loss is E_t[Var(target | x_t)] (Gaussian conditioning),
    within 5 standard errors: the trainer's targets, noise and times are those of the math."""
    T, steps = 50, 100
    alpha_bars = alpha_bars_of("linear", T)
    trainer = Trainer(Oracle(objective, alpha_bars), config(objective=objective, num_train_timesteps=T, lr=0.0,
                                                            steps=steps, checkpoint_every=steps),
                      GaussianLoader(200), tmp_path, show_progress=False)
    losses = np.array(trainer.train().losses)
    expected = expected_minimum(objective, alpha_bars, T)
    assert abs(losses.mean() - expected) < 5 * losses.std() / np.sqrt(steps), (losses.mean(), expected)


@pytest.mark.exercise("ex07.4")
@pytest.mark.parametrize(("objective", "gamma"), [  # min-SNR weights are not defined for flow matching
    *((objective, gamma) for gamma in (None, 2.0) for objective in ("epsilon", "sample", "v_prediction")),
    ("flow", None)])
def test_loss_is_the_weighted_squared_target_with_min_snr_weights(objective, gamma, tmp_path):
    """A zero prediction's loss is mean_b w_b mean_d target^2, the target recovered from the x_t the model saw
    (VP: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab); flow: eps = (x_t - (1 - t) x0) / t) and the min-SNR weights
    of REFERENCES.md: min(SNR, g) / SNR (eps), min(SNR, g) (x0), min(SNR, g) / (SNR + 1) (v)."""
    T = 50
    model = Recorder()
    trainer = Trainer(model, config(objective=objective, num_train_timesteps=T, min_snr_gamma=gamma),
                      labeled_data()[0], tmp_path, show_progress=False)
    x0 = np.random.default_rng(5).standard_normal((64, 2))
    loss = trainer.train_step(x0)
    xt, t, _ = model.calls[0]
    if objective == "flow":
        s = t[:, None]
        target, weight = (xt - (1 - s) * x0) / s - x0, np.ones(64)
    else:
        ab = alpha_bars_of("linear", T)[t][:, None]
        eps = (xt - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        target = {"epsilon": eps, "sample": x0, "v_prediction": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[objective]
        snr = (ab / (1 - ab))[:, 0]
        clipped = np.minimum(snr, gamma or np.inf)
        weight = np.ones(64) if gamma is None else {"epsilon": clipped / snr, "sample": clipped,
                                                    "v_prediction": clipped / (snr + 1)}[objective]
        assert t.dtype == np.int64 and t.min() >= 1 and t.max() <= T
    assert_close(np.float64(loss), np.mean(weight * np.mean(target**2, axis=1)), what="loss")


@pytest.mark.exercise("ex07.4")
def test_training_reaches_the_optimum_of_E15_on_gaussian_data(tmp_path):
    """An affine model per t can be E[eps | x_t]; AdamW brings the loss from E[eps^2] = 1 to the minimum."""
    T, steps = 25, 400
    alpha_bars = alpha_bars_of("linear", T)
    trainer = Trainer(PerStepAffine(T), config(num_train_timesteps=T, lr=0.05, weight_decay=0.0, steps=steps,
                                               checkpoint_every=steps, batch_size=256),
                      GaussianLoader(256), tmp_path, show_progress=False)
    losses = np.array(trainer.train().losses)
    minimum, last = expected_minimum("epsilon", alpha_bars, T), losses[-100:]
    assert abs(losses[0] - 1.0) < 0.15, f"first loss {losses[0]:.3f}: a zero prediction's loss is E[eps^2] = 1"
    assert minimum - 5 * last.std() / 10 < last.mean() < minimum * 1.03, \
        f"mean of the last 100 losses {last.mean():.4f}, expected the minimum {minimum:.4f} (within 3%)"


@pytest.mark.exercise("ex07.4")
def test_train_step_follows_the_gradient_of_the_loss_from_zeroed_gradients(tmp_path):
    """Each step returns the loss of the batch (t and noise from the trainer's generator), keeps the norm of
    that loss's own gradient (not one accumulated over steps) in grad_norm, and moves the weights downhill."""
    model = TinyDenoiser(np.random.default_rng(0), dropout=0.0)
    trainer = Trainer(model, config(grad_clip=None, warmup_steps=0), labeled_data()[0], tmp_path,
                      show_progress=False)
    x0 = np.random.default_rng(5).standard_normal((16, 2))
    for step in range(3):
        replay = np.random.default_rng()
        replay.bit_generator.state = trainer.rng.bit_generator.state
        model.zero_grad()
        expected = trainer.objective.loss(lambda xt, t: model(Tensor(xt), t), x0, replay)
        expected.backward()
        grads = {k: np.zeros_like(p.data) if p.grad is None else p.grad.copy() for k, p in model.named_parameters()}
        before = {k: p.data.copy() for k, p in model.named_parameters()}
        loss = trainer.train_step(x0)
        assert_close(np.float64(loss), np.float64(expected.item()), what=f"step {step}: the returned loss")
        norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
        assert_close(np.float64(trainer.grad_norm), norm,
                     what=f"step {step}: grad_norm (gradients must be zeroed before backward)")
        moved = sum(np.sum((p.data - before[k]) * grads[k]) for k, p in model.named_parameters())
        assert moved < 0, f"step {step}: the weights did not move against the gradient (no optimizer step?)"


def test_label_dropout_replaces_labels_by_the_null_label(tmp_path):
    model = Recorder()
    x, _ = labeled_data(100)
    trainer = Trainer(model, config(batch_size=100, steps=50, label_dropout=0.3, null_label=9),
                      (x, np.zeros(100, np.int64)), tmp_path, show_progress=False)
    trainer.train()
    labels = np.concatenate([c[2] for c in model.calls])
    assert set(np.unique(labels)) == {0, 9}
    assert abs((labels == 9).mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / labels.size)


# --- exact resume, Ctrl-C --------------------------------------------------------------------------------


class StopAt:
    """A callback that interrupts the run after step k: by raising KeyboardInterrupt, or by a real SIGINT."""

    def __init__(self, k, how):
        self.k, self.how = k, how

    def __call__(self, trainer):
        if trainer.step == self.k:
            if self.how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt


class RaisingDenoiser(TinyDenoiser):
    """Raises KeyboardInterrupt in its n-th forward call (in the middle of a step)."""

    def __init__(self, rng, n):
        super().__init__(rng)
        self.n = n

    def forward(self, x, t, class_labels=None):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return super().forward(x, t, class_labels)


@pytest.mark.parametrize(("objective", "how", "ema_warmup"),
                         [("v_prediction", "callback", True), ("flow", "model", False), ("epsilon", "sigint", False)])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one_bit_for_bit(objective, how, ema_warmup, tmp_path):
    """30 steps, float64, stopped at step 13 (Ctrl-C, or KeyboardInterrupt from a callback or from the model in
    the middle of step 14), resumed from the checkpoint saved then: the same losses, LRs, gradient norms and
    final weights (the EMA's too, whose warmed-up decay depends on the step), bit for bit. Labels with label
    dropout, min-SNR, model dropout and data epochs of 6 batches all draw random numbers that must be restored."""
    cfg = config(objective=objective, label_dropout=0.2, null_label=3, ema_warmup=ema_warmup,
                 min_snr_gamma=None if objective == "flow" else 5.0)
    data = labeled_data()
    full = Trainer(TinyDenoiser(np.random.default_rng(0)), cfg, data, tmp_path / "full", show_progress=False)
    full.train()

    stopped = tmp_path / "stopped"
    if how == "model":
        first = Trainer(RaisingDenoiser(np.random.default_rng(0), n=14), cfg, data, stopped, show_progress=False)
    else:
        first = Trainer(TinyDenoiser(np.random.default_rng(0)), cfg, data, stopped, show_progress=False,
                        callbacks=[StopAt(13, how)])
    result = first.train()
    assert result.interrupted and result.last_step == 13
    assert load_checkpoint(stopped).meta["step"] == 13
    resumed = Trainer.resume(stopped, data, TinyDenoiser(np.random.default_rng(99)), show_progress=False)
    assert resumed.train().last_step == 30

    rows, expected = read_log(stopped / "log.csv"), read_log(tmp_path / "full" / "log.csv")
    assert [r[:4] for r in rows] == [r[:4] for r in expected] and len(rows) == 31
    for name, value in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value, err_msg=name)
        np.testing.assert_array_equal(resumed.ema.state_dict()[name], full.ema.state_dict()[name], err_msg=name)


# --- LR warmup, EMA, the log, the time budget --------------------------------------------------------------


def test_warmup_lr_and_ema_follow_their_definitions(tmp_path):
    """lr at step k (from 1) = lr * min(1, k / warmup_steps); EMA: s_0 = the initial weights,
    s_k = decay s_{k-1} + (1 - decay) p_k."""
    weights = []
    model = TinyDenoiser(np.random.default_rng(0))
    initial = model.state_dict()
    trainer = Trainer(model, config(lr=0.1, warmup_steps=4, steps=7), labeled_data(), tmp_path,
                      show_progress=False, callbacks=[lambda tr: weights.append(tr.model.state_dict())])
    trainer.train()
    lrs = np.array([float(r[2]) for r in read_log(tmp_path / "log.csv")[1:]])
    assert_close(lrs, 0.1 * np.minimum(1.0, np.arange(1, 8) / 4), what="lr")
    for name, shadow in initial.items():
        for w in weights:
            shadow = 0.9 * shadow + 0.1 * w[name]
        assert_close(trainer.ema.state_dict()[name], shadow, what=name)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_csv_log_holds_window_means_and_the_time_budget_stops_the_run(tmp_path):
    """A fake clock advanced 7 s after each step: a 1-minute budget stops after 9 steps (63 s >= 60 s); with
    log_every = 4 the rows are steps 4, 8 (written at 21 s and 49 s, before their step's tick) and 9 (the last
    window, at the end: 63 s), each the mean of its steps' losses."""
    clock = FakeClock()

    def tick(trainer):
        clock.now += 7.0

    trainer = Trainer(TinyDenoiser(np.random.default_rng(0)), config(steps=None, minutes=1.0, log_every=4),
                      labeled_data(), tmp_path, show_progress=False, callbacks=[tick], clock=clock)
    result = trainer.train()
    assert result.last_step == 9 and not result.interrupted
    header, *rows = read_log(tmp_path / "log.csv")
    assert tuple(header) == LOG_COLUMNS == ("step", "loss", "lr", "grad_norm", "time")
    assert [int(r[0]) for r in rows] == [4, 8, 9]
    windows = [result.losses[0:4], result.losses[4:8], result.losses[8:9]]
    assert_close(np.array([float(r[1]) for r in rows]), np.array([np.mean(w) for w in windows]), what="loss")
    assert [float(r[4]) for r in rows] == [21.0, 49.0, 63.0]
    assert all(float(r[3]) > 0 for r in rows)


def test_progress_bar_shows_loss_rate_and_eta(tmp_path, capsys):
    Trainer(TinyDenoiser(np.random.default_rng(0)), config(steps=5), labeled_data(), tmp_path).train()
    err = capsys.readouterr().err
    assert "loss=" in err and "steps_per_s=" in err and "eta=" in err


# --- checkpoints -----------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model = TinyDenoiser(np.random.default_rng(0))
    cfg = config(steps=6)
    trainer = Trainer(model, cfg, labeled_data(), tmp_path, show_progress=False,
                      data_description={"dataset": "gaussian"})
    trainer.train()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config == cfg and ckpt.meta["step"] == 6
    assert ckpt.meta["model"] == {"class": "test_train:TinyDenoiser", "config": model.config}
    assert ckpt.meta["data"]["description"] == {"dataset": "gaussian"} and ckpt.meta["data"]["shape"] == [50, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000006.safetensors", "checkpoint.json",
                                                          "log.csv"]
    for group, state in [("model", model.state_dict()), ("ema", trainer.ema.state_dict()),
                         ("optimizer", trainer.optimizer.state_dict()),
                         ("lr_scheduler", trainer.lr_scheduler.state_dict())]:
        assert ckpt.states[group].keys() == state.keys()
        for name, value in state.items():
            np.testing.assert_array_equal(ckpt.states[group][name], value, err_msg=f"{group}.{name}")
    assert ckpt.model_state_dict() is ckpt.states["ema"]


@pytest.fixture
def saved_run(tmp_path):
    run = tmp_path / "run"
    Trainer(TinyDenoiser(np.random.default_rng(0), with_config=False), config(steps=6), labeled_data(), run,
            show_progress=False).train()
    return run


def weights_file(run):
    return next(run.glob("*.safetensors"))


def truncate(run):
    path = weights_file(run)
    path.write_bytes(path.read_bytes()[:-100])


def garble_json(run):
    (run / "checkpoint.json").write_bytes(b'{"format": "minidiff-training-check')


def delete_weights(run):
    weights_file(run).unlink()


@pytest.mark.parametrize(("damage", "error", "match"), [
    (truncate, ValueError, "SHA-256 does not match"),
    (garble_json, ValueError, "not JSON"),
    (delete_weights, FileNotFoundError, "weights file .* is missing"),
])
def test_corrupt_or_truncated_checkpoint_is_refused_and_nothing_is_overwritten(saved_run, damage, error, match):
    damage(saved_run)
    before = files_of(saved_run)
    with pytest.raises(error, match=match):
        Trainer.resume(saved_run, labeled_data(), TinyDenoiser(np.random.default_rng(0), with_config=False))
    assert files_of(saved_run) == before


@pytest.mark.parametrize(("change", "match"), [
    (dict(model=TinyDenoiser(np.random.default_rng(0), hidden=8, with_config=False)), "shape"),
    (dict(model=PerStepAffine(20)), "missing keys"),
    (dict(config=config(steps=6, objective="flow")), "config.objective: the checkpoint was trained with 'epsilon'"),
    (dict(data=labeled_data(seed=2)), "other data"),
])
def test_mismatched_checkpoint_is_refused_and_nothing_is_overwritten(saved_run, change, match):
    before = files_of(saved_run)
    args = {"data": labeled_data(), "model": TinyDenoiser(np.random.default_rng(0), with_config=False), **change}
    with pytest.raises(ValueError, match=match):
        Trainer.resume(saved_run, **args)
    assert files_of(saved_run) == before


def test_resume_checks_the_model_config_and_rebuilds_only_minidiff_models(tmp_path):
    Trainer(TinyDenoiser(np.random.default_rng(0)), config(steps=2), labeled_data(), tmp_path,
            show_progress=False).train()
    with pytest.raises(ValueError, match="model config"):
        Trainer.resume(tmp_path, labeled_data(), TinyDenoiser(np.random.default_rng(0), hidden=8))
    with pytest.raises(ValueError, match="cannot rebuild the model 'test_train:TinyDenoiser'"):
        Trainer.resume(tmp_path, labeled_data())


def test_a_new_run_never_overwrites_an_old_one(saved_run):
    before = files_of(saved_run)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        Trainer(TinyDenoiser(np.random.default_rng(0)), config(), labeled_data(), saved_run)
    assert files_of(saved_run) == before


def test_resumed_run_may_extend_the_budget(saved_run):
    resumed = Trainer.resume(saved_run, labeled_data(), TinyDenoiser(np.random.default_rng(0), with_config=False),
                             config=config(steps=9), show_progress=False)
    assert resumed.train().first_step == 6 and resumed.step == 9
    assert [int(r[0]) for r in read_log(saved_run / "log.csv")[1:]] == list(range(1, 10))


# --- bad arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "match"), [
    (dict(objective="x0"), "objective: expected one of"),
    (dict(steps=None, minutes=None), "steps, minutes"),
    (dict(steps=0), "steps: expected an int >= 1"),
    (dict(objective="flow", min_snr_gamma=5.0), "min_snr_gamma"),
    (dict(label_dropout=0.1), "null_label"),
    (dict(schedule="quadratic"), "schedule"),
    (dict(ema_decay=1.5), "ema_decay"),
])
def test_bad_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        config(**changes)


def test_bad_data_is_refused(tmp_path):
    model = TinyDenoiser(np.random.default_rng(0))
    with pytest.raises(TypeError, match="data: expected arrays"):
        Trainer(model, config(), [1, 2, 3], tmp_path)
    with pytest.raises(ValueError, match="batch_size: 8 is larger than the 5 examples"):
        Trainer(model, config(), np.zeros((5, 2)), tmp_path)
    with pytest.raises(ValueError, match="labels of shape"):
        Trainer(model, config(), (np.zeros((50, 2)), np.zeros(49)), tmp_path)
    with pytest.raises(TypeError, match="config: expected a TrainConfig"):
        Trainer(model, {"steps": 3}, np.zeros((50, 2)), tmp_path)
    assert not any(tmp_path.iterdir())
