"""Whole training runs against PyTorch: a small MLP (AdamW, warmup + cosine schedule, gradient clipping)
and a small CNN (conv, group norm, attention; SGD with Nesterov momentum, then Adam) trained 50 steps
from identical weights on identical batches follow the same loss curve, float64, to 1e-8 relative."""

from __future__ import annotations

import math

import numpy as np
import pytest
from models import SmallCNN, mlp
from tolerances import TRAINING_CURVE, assert_close

import minidiff.functional as F
from minidiff import optim
from minidiff.autodiff import Tensor

STEPS = 50


def warmup_cosine_lr(step: int, base: float, warmup: int, total: int) -> float:
    """The schedule written out independently: linear warmup (step + 1) / warmup, then half a cosine to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def regression_batches(rng):
    """A 2-D regression (a rotation followed by tanh), 16 points per batch."""
    for _ in range(STEPS):
        x = rng.standard_normal((16, 2))
        yield x, np.tanh(x @ np.array([[0.6, -0.8], [0.8, 0.6]]))


def classification_batches(rng):
    """Three classes of 6x6 images: class c has a bright stripe in row 2c (plus noise)."""
    for _ in range(STEPS):
        labels = rng.integers(0, 3, size=4)
        x = rng.standard_normal((4, 3, 6, 6)) * 0.5
        x[np.arange(4), :, 2 * labels, :] += 2.0
        yield x, labels


@pytest.mark.torch
def test_mlp_with_adamw_schedule_and_clipping_follows_torchs_loss_curve():
    import torch
    from reference.torch_models import mlp_torch

    model = mlp(np.random.default_rng(0))
    twin = mlp_torch()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
    opt = optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.05)
    sched = optim.LRScheduler(opt, optim.WarmupCosine(warmup_steps=5, total_steps=STEPS))
    torch_opt = torch.optim.AdamW(twin.parameters(), lr=0.02, weight_decay=0.05)
    ours, theirs, norms = [], [], []
    for step, (x, y) in enumerate(regression_batches(np.random.default_rng(1))):
        lr = warmup_cosine_lr(step, 0.02, 5, STEPS)
        assert_close(np.float64(opt.param_groups[0]["lr"]), np.float64(lr), what=f"lr at step {step}")
        for g in torch_opt.param_groups:
            g["lr"] = lr

        opt.zero_grad()
        loss = F.mse_loss(model(Tensor(x)), Tensor(y))
        loss.backward()
        norm = optim.clip_grad_norm_(model.parameters(), max_norm=0.5)
        opt.step()
        sched.step()

        torch_opt.zero_grad()
        torch_loss = torch.nn.functional.mse_loss(twin(torch.from_numpy(x)), torch.from_numpy(y))
        torch_loss.backward()
        torch_norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm=0.5)
        torch_opt.step()

        ours.append(loss.item())
        theirs.append(torch_loss.item())
        norms.append((norm, torch_norm.item()))
    assert_close(np.array(ours), np.array(theirs), tol=TRAINING_CURVE, what="loss curve")
    assert_close(np.array(norms)[:, 0], np.array(norms)[:, 1], tol=TRAINING_CURVE, what="gradient norms")
    assert ours[-1] < 0.5 * ours[0], "the run must actually train, or the comparison proves little"
    assert any(a > 0.5 for a, _ in norms), "clipping must have been active on some steps"


@pytest.mark.torch
def test_cnn_with_attention_follows_torchs_loss_curve():
    import torch
    from reference.torch_models import SmallCNNTorch

    model = SmallCNN(np.random.default_rng(0))
    twin = SmallCNNTorch()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
    # Two optimizers in sequence: SGD with Nesterov momentum and weight decay, then Adam.
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    torch_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ours, theirs = [], []
    for step, (x, labels) in enumerate(classification_batches(np.random.default_rng(1))):
        if step == STEPS // 2:
            opt = optim.Adam(model.parameters(), lr=3e-3)
            torch_opt = torch.optim.Adam(twin.parameters(), lr=3e-3)
        opt.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), labels)
        loss.backward()
        opt.step()

        torch_opt.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(labels))
        torch_loss.backward()
        torch_opt.step()
        ours.append(loss.item())
        theirs.append(torch_loss.item())
    assert_close(np.array(ours), np.array(theirs), tol=TRAINING_CURVE, what="loss curve")
    assert np.mean(ours[-10:]) < 0.7 * np.mean(ours[:10]), "the run must actually train"
    final = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
    for name, value in model.state_dict().items():
        assert_close(value, final[name], tol=TRAINING_CURVE, scale=np.abs(final[name]).max(), what=name)
