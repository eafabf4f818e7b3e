"""minidiff.nn: registration and traversal, state dicts (strict loading, errors), modes, repr, the
layers' PyTorch names, shapes and default initializations, and weights exchanged with PyTorch twins."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from models import SmallCNN, mlp
from tolerances import assert_close

import minidiff.functional as F
from minidiff import nn
from minidiff.autodiff import Tensor

# --- registration and traversal -------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.fc = nn.Linear(2, 3, rng=rng)
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.register_buffer("count", np.zeros((), np.int64))
        self.register_buffer("table", np.arange(3.0), persistent=False)
        self.note = "plain attribute"

    def forward(self, x):
        return self.fc(x) * self.scale


class Net(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.block = Block(rng)
        self.layers = nn.ModuleList([nn.Linear(3, 3, rng=rng), nn.SiLU()])
        self.tied = self.block  # the same module under a second name


def test_names_follow_registration_order_and_nesting():
    net = Net(np.random.default_rng(0))
    # PyTorch's order: modules parents first, each module's own parameters before its children's.
    assert [n for n, _ in net.named_parameters()] == ["block.scale", "block.fc.weight", "block.fc.bias",
                                                      "layers.0.weight", "layers.0.bias"]
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.fc", "layers", "layers.0", "layers.1"]
    assert [n for n, _ in net.named_children()] == ["block", "layers", "tied"]
    assert list(net.children()) == [net.block, net.layers, net.block]
    assert [n for n, _ in net.named_buffers()] == ["block.count", "block.table"]
    assert [n for n, _ in net.block.named_parameters(recurse=False)] == ["scale"]
    assert list(net.parameters()) == [p for _, p in net.named_parameters()]
    assert net.block.note == "plain attribute" and "note" not in dict(net.block.named_parameters())


def test_state_dict_holds_parameters_and_persistent_buffers_under_every_name_as_copies():
    net = Net(np.random.default_rng(0))
    state = net.state_dict()
    # PyTorch's order (own parameters, own buffers, children) and its handling of a module reachable
    # twice: listed under both names; the non-persistent buffer is left out.
    assert list(state) == ["block.scale", "block.count", "block.fc.weight", "block.fc.bias",
                           "layers.0.weight", "layers.0.bias",
                           "tied.scale", "tied.count", "tied.fc.weight", "tied.fc.bias"]
    assert len(list(net.parameters())) == 5  # the shared parameters once
    state["block.scale"][:] = 7.0
    assert np.all(net.block.scale.data == 1.0), "state_dict() must be a snapshot, not a view"
    assert net.state_dict(keep_vars=True)["block.scale"] is net.block.scale


def test_assignment_rules():
    rng = np.random.default_rng(0)
    block = Block(rng)
    with pytest.raises(TypeError, match="scale: is a registered Parameter"):
        block.scale = Tensor(np.ones(3, np.float32))  # would silently stop training it
    block.scale = None
    assert "scale" not in dict(block.named_parameters())
    block.extra = nn.Parameter(np.zeros(2))
    assert "extra" in dict(block.named_parameters())
    del block.extra
    assert "extra" not in dict(block.named_parameters()) and not hasattr(block, "extra")
    block.count = np.ones((), np.int64)  # a buffer takes a new array
    assert isinstance(block.count, Tensor) and block.state_dict()["count"] == 1

    class Forgetful(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\)"):
        Forgetful()
    with pytest.raises(ValueError, match="requires_grad"):
        block.register_buffer("bad", nn.Parameter(np.ones(2)))
    with pytest.raises(TypeError, match="float32"):
        nn.Parameter(np.arange(3))


def test_zero_grad_train_eval_and_deepcopy():
    net = Net(np.random.default_rng(0))
    out = net.block(Tensor(np.ones((4, 2), np.float32))).sum()
    out.backward()
    assert all(p.grad is not None for p in net.block.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(TypeError, match="mode"):
        net.train("no")
    twin = copy.deepcopy(net)
    twin.block.scale.data[:] = 5.0
    assert np.all(net.block.scale.data == 1.0) and twin.tied is twin.block


def test_repr_reads_like_pytorch():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=rng), nn.GroupNorm(2, 8),
                          nn.Sequential(nn.Linear(4, 5, rng=rng), nn.Dropout(0.1, rng=rng)))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
        "  (1): GroupNorm(2, 8, eps=1e-05, affine=True, bias=True)\n"
        "  (2): Sequential(\n"
        "    (0): Linear(in_features=4, out_features=5, bias=True)\n"
        "    (1): Dropout(p=0.1)\n"
        "  )\n"
        ")"
    )


@pytest.mark.torch
def test_repr_equals_pytorchs_for_the_same_layers():
    import torch

    rng = np.random.default_rng(0)
    ours = nn.Sequential(nn.Conv2d(3, 8, (3, 1), stride=2, padding=1, rng=rng), nn.GroupNorm(4, 8, bias=False),
                         nn.SiLU(), nn.ModuleList([nn.Linear(8, 2, bias=False, rng=rng), nn.Identity()]),
                         nn.LayerNorm(2), nn.LayerNorm(2, elementwise_affine=False), nn.ReLU())
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 8, (3, 1), stride=2, padding=1),
                                 torch.nn.GroupNorm(4, 8, bias=False),
                                 torch.nn.SiLU(), torch.nn.ModuleList([torch.nn.Linear(8, 2, bias=False),
                                                                       torch.nn.Identity()]),
                                 torch.nn.LayerNorm(2), torch.nn.LayerNorm(2, elementwise_affine=False),
                                 torch.nn.ReLU())
    assert repr(ours) == repr(theirs)


def test_containers():
    rng = np.random.default_rng(0)
    a, b, c = nn.Linear(2, 3, rng=rng), nn.SiLU(), nn.Linear(3, 1, rng=rng)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c] and seq[-1] is c
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == [b, c]
    x = Tensor(rng.standard_normal((5, 2)).astype(np.float32))
    assert np.array_equal(seq(x).data, c(b(a(x))).data)
    with pytest.raises(IndexError, match="index"):
        seq[3]
    layers = nn.ModuleList()
    layers.append(a).extend([c])
    assert [n for n, _ in layers.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    with pytest.raises(TypeError, match="module: expected a Module"):
        layers.append(lambda x: x)
    with pytest.raises(NotImplementedError, match="forward"):
        layers(x)


# --- load_state_dict ---------------------------------------------------------------------------------


def test_load_state_dict_copies_values_in():
    rng = np.random.default_rng(0)
    source, target = SmallCNN(rng), SmallCNN(rng)
    x = Tensor(rng.standard_normal((2, 3, 6, 6)))
    weight = target.head.weight
    result = target.load_state_dict(source.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert target.head.weight is weight, "loading copies into the existing parameters"
    assert np.array_equal(target(x).data, source(x).data)


def test_strict_load_reports_every_problem_and_changes_nothing():
    rng = np.random.default_rng(0)
    model = SmallCNN(rng)
    before = model.state_dict()
    state = SmallCNN(rng).state_dict()
    del state["norm.bias"]
    state["head.extra"] = np.zeros(2)
    state["conv_in.weight"] = np.zeros((8, 3, 5, 5))
    state["qkv.bias"] = state["qkv.bias"].astype(np.float32)
    with pytest.raises(ValueError, match="SmallCNN") as info:
        model.load_state_dict(state)
    message = str(info.value)
    for expected in ("missing keys: norm.bias", "unexpected keys: head.extra",
                     "conv_in.weight: expected shape (8, 3, 3, 3), got (8, 3, 5, 5)",
                     "qkv.bias: expected dtype float64, got float32"):
        assert expected in message
    after = model.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before), "a failed load must not change the model"


def test_non_strict_load_skips_missing_and_unexpected_keys_but_never_wrong_shapes():
    rng = np.random.default_rng(0)
    model, other = SmallCNN(rng), SmallCNN(rng)
    state = {"head.weight": other.head.weight.data, "stray": np.ones(1)}
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["stray"] and "head.weight" not in result.missing_keys
    assert len(result.missing_keys) == len(model.state_dict()) - 1
    assert np.array_equal(model.head.weight.data, other.head.weight.data)
    with pytest.raises(ValueError, match=r"head.bias: expected shape \(3,\), got \(4,\)"):
        model.load_state_dict({"head.bias": np.zeros(4)}, strict=False)
    with pytest.raises(TypeError, match="state_dict"):
        model.load_state_dict([("head.bias", np.zeros(3))])


# --- layers: names, shapes, initialization -------------------------------------------------------------


def dkw_bound(n: int, alpha: float = 1e-6) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2) = alpha."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def check_uniform(w: np.ndarray, bound: float) -> None:
    """w ~ U(-bound, bound): within the bounds, reaching them, and its distribution and moments."""
    w = w.astype(np.float64).ravel()
    n = w.size
    top = float(np.asarray(bound, np.float32)) if w.dtype == np.float32 else bound
    assert np.all(np.abs(w) <= top), "a value outside [-1/sqrt(fan_in), 1/sqrt(fan_in)]"
    # The support is the whole interval: P(max |w| < (1 - d) bound) = (1 - d)^n, below 1e-6 here.
    d = -math.log(1e-6) / n
    assert np.abs(w).max() >= (1 - d) * bound
    # Kolmogorov-Smirnov distance to the uniform CDF (x + b) / 2b, against the DKW bound (alpha 1e-6).
    u = np.sort((w + bound) / (2 * bound))
    i = np.arange(1, n + 1)
    assert max(np.max(i / n - u), np.max(u - (i - 1) / n)) <= dkw_bound(n)
    # Mean 0 (sd b / sqrt(3n)) and E w^2 = b^2 / 3 (sd b^2 sqrt(4 / 45n)), within 5.5 standard deviations.
    assert abs(w.mean()) <= 5.5 * bound / math.sqrt(3 * n)
    assert abs(np.mean(w * w) - bound**2 / 3) <= 5.5 * bound**2 * math.sqrt(4 / (45 * n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_init_is_pytorchs_uniform(dtype):
    layer = nn.Linear(50, 200, rng=np.random.default_rng(1), dtype=dtype)
    assert layer.weight.shape == (200, 50) and layer.bias.shape == (200,)
    assert layer.weight.dtype == dtype and layer.bias.dtype == dtype
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad and layer.weight.is_leaf
    check_uniform(layer.weight.data, 1 / math.sqrt(50))
    wide = nn.Linear(7, 4000, rng=np.random.default_rng(2), dtype=dtype)
    check_uniform(wide.bias.data, 1 / math.sqrt(7))  # the bias too has fan_in = in_features


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_init_is_pytorchs_uniform_over_in_channels_times_kernel(dtype):
    layer = nn.Conv2d(6, 400, (3, 2), rng=np.random.default_rng(3), dtype=dtype)
    assert layer.weight.shape == (400, 6, 3, 2) and layer.bias.shape == (400,)
    check_uniform(layer.weight.data, 1 / math.sqrt(6 * 3 * 2))
    check_uniform(layer.bias.data, 1 / math.sqrt(6 * 3 * 2))


def test_norm_layers_start_as_identity_affine():
    gn = nn.GroupNorm(4, 12, dtype=np.float64)
    ln = nn.LayerNorm((3, 5))
    assert np.array_equal(gn.weight.data, np.ones(12)) and np.array_equal(gn.bias.data, np.zeros(12))
    assert gn.weight.dtype == np.float64 and ln.weight.dtype == np.float32
    assert ln.weight.shape == ln.bias.shape == (3, 5)
    assert np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)
    assert nn.GroupNorm(2, 4, affine=False).state_dict() == {}
    assert list(nn.LayerNorm(4, bias=False).state_dict()) == ["weight"]


def test_same_seed_same_weights_and_float32_is_float64_rounded():
    a = nn.Conv2d(3, 5, 3, rng=np.random.default_rng(7), dtype=np.float64)
    b = nn.Conv2d(3, 5, 3, rng=np.random.default_rng(7), dtype=np.float64)
    c = nn.Conv2d(3, 5, 3, rng=np.random.default_rng(7), dtype=np.float32)
    assert np.array_equal(a.weight.data, b.weight.data) and np.array_equal(a.bias.data, b.bias.data)
    assert np.array_equal(c.weight.data, a.weight.data.astype(np.float32))
    d = nn.Conv2d(3, 5, 3, rng=np.random.default_rng(8), dtype=np.float64)
    assert not np.array_equal(a.weight.data, d.weight.data)


def test_layers_reject_bad_arguments():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match="out_features"):
        nn.Linear(2, 2.5)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(2, 3, rng=0)
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(2, 3, dtype=np.int32)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2d(2, 3, 0)
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2d(2, 3, 3, padding=-1)
    with pytest.raises(ValueError, match="num_groups: 3 does not divide num_channels 8"):
        nn.GroupNorm(3, 8)
    with pytest.raises(ValueError, match="p: expected a probability"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(())
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


def test_dropout_drops_a_fraction_p_in_training_and_nothing_in_eval():
    p, n = 0.25, 40_000
    drop = nn.Dropout(p, rng=np.random.default_rng(0))
    x = Tensor(np.ones((200, 200)), requires_grad=True)
    y = drop(x)
    dropped = np.mean(y.data == 0)
    # Binomial fraction: sd sqrt(p (1 - p) / n) = 0.0022; 5 sd is a one-in-a-million miss.
    assert abs(dropped - p) <= 5 * math.sqrt(p * (1 - p) / n)
    assert np.allclose(y.data[y.data != 0], 1 / (1 - p))  # the kept ones are rescaled: E[y] = x
    y.sum().backward()
    assert np.array_equal(x.grad, y.data), "the gradient passes where kept, scaled alike"
    again = nn.Dropout(p, rng=np.random.default_rng(0))(Tensor(np.ones((200, 200))))
    assert np.array_equal(again.data, y.data), "the same seed drops the same elements"
    drop.eval()
    assert drop(x) is x


# --- weights exchanged with PyTorch ------------------------------------------------------------------------


def layer_pairs(torch):
    """(minidiff layer, PyTorch layer, input shape) for every layer kind and option."""
    rng = np.random.default_rng(0)
    f64 = torch.float64
    return [
        (nn.Linear(4, 3, rng=rng, dtype=np.float64), torch.nn.Linear(4, 3, dtype=f64), (5, 4)),
        (nn.Linear(4, 3, bias=False, rng=rng, dtype=np.float64), torch.nn.Linear(4, 3, bias=False, dtype=f64),
         (2, 6, 4)),
        (nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 2), rng=rng, dtype=np.float64),
         torch.nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 2), dtype=f64), (2, 3, 7, 5)),
        (nn.Conv2d(3, 2, 1, bias=False, rng=rng, dtype=np.float64),
         torch.nn.Conv2d(3, 2, 1, bias=False, dtype=f64), (1, 3, 4, 4)),
        (nn.GroupNorm(2, 6, eps=1e-3, dtype=np.float64), torch.nn.GroupNorm(2, 6, eps=1e-3, dtype=f64), (3, 6, 5)),
        (nn.GroupNorm(3, 6, affine=False, dtype=np.float64), torch.nn.GroupNorm(3, 6, affine=False, dtype=f64),
         (2, 6, 2, 3)),
        (nn.GroupNorm(1, 4, bias=False, dtype=np.float64), torch.nn.GroupNorm(1, 4, bias=False, dtype=f64), (2, 4, 3)),
        (nn.LayerNorm((3, 4), dtype=np.float64), torch.nn.LayerNorm((3, 4), dtype=f64), (2, 3, 4)),
        (nn.LayerNorm(4, bias=False, dtype=np.float64), torch.nn.LayerNorm(4, bias=False, dtype=f64), (5, 4)),
    ]


@pytest.mark.torch
def test_every_layer_has_pytorchs_parameter_names_shapes_and_output():
    import torch

    rng = np.random.default_rng(1)
    for ours, theirs, shape in layer_pairs(torch):
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in theirs.state_dict().items()}, repr(ours)
        # Perturb the norms away from 1 and 0 so that weight and bias are exercised.
        state = {k: v + rng.standard_normal(v.shape) * 0.1 for k, v in ours.state_dict().items()}
        ours.load_state_dict(state)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        x = rng.standard_normal(shape)
        assert_close(ours(Tensor(x)).data, theirs(torch.from_numpy(x)).detach().numpy(), what=repr(ours))


def models(torch, rng):
    """(minidiff model, its PyTorch twin, an input batch) pairs."""
    from reference.torch_models import SmallCNNTorch, mlp_torch

    return [(mlp(rng), mlp_torch(), rng.standard_normal((6, 2))),
            (SmallCNN(rng), SmallCNNTorch(), rng.standard_normal((2, 3, 6, 6)))]


@pytest.mark.torch
def test_state_dict_round_trip_minidiff_pytorch_minidiff():
    import torch

    torch.manual_seed(0)
    for ours, theirs, x in models(torch, np.random.default_rng(0)):
        # minidiff's weights into the twin: the same function.
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)
        assert_close(ours(Tensor(x)).data, theirs(torch.from_numpy(x)).detach().numpy())
        # ... and back into another minidiff model: the same weights bit for bit, so the same outputs.
        back = copy.deepcopy(ours)
        for p in back.parameters():
            p.data[...] = 0.0
        back.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()}, strict=True)
        assert np.array_equal(back(Tensor(x)).data, ours(Tensor(x)).data)
        # Weights that PyTorch drew (its own initialization, a different function) back into minidiff.
        fresh = type(theirs)() if not isinstance(theirs, torch.nn.Sequential) else copy.deepcopy(theirs)
        with torch.no_grad():
            for p in fresh.parameters():
                p.uniform_(-0.5, 0.5)
        ours.load_state_dict({k: v.numpy() for k, v in fresh.state_dict().items()}, strict=True)
        expected = fresh(torch.from_numpy(x)).detach().numpy()
        assert_close(ours(Tensor(x)).data, expected)
        assert not np.allclose(expected, theirs(torch.from_numpy(x)).detach().numpy())


@pytest.mark.torch
def test_gradients_of_a_model_match_the_twin():
    """The parameters' gradients (what the optimizers see) agree with PyTorch's, float64."""
    import torch

    rng = np.random.default_rng(3)
    for ours, theirs, x in models(torch, rng):
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        target = rng.standard_normal(ours(Tensor(x)).shape)
        F.mse_loss(ours(Tensor(x)), Tensor(target)).backward()
        torch.nn.functional.mse_loss(theirs(torch.from_numpy(x)), torch.from_numpy(target)).backward()
        theirs_grads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
        for name, p in ours.named_parameters():
            assert_close(p.grad, theirs_grads[name], scale=np.abs(theirs_grads[name]).max(), what=name)
