# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Automatic differentiation, from one number to tensors
#
# Training a diffusion model means following the gradient of a loss with respect to millions of
# weights. Nobody writes those derivatives by hand: *reverse-mode automatic differentiation* records
# how the loss was computed and then applies the chain rule backwards through that record, once per
# operation. This chapter builds that machine twice: first on single numbers (`Value`), then on
# arrays (`Tensor`), which is what every later chapter trains with. At the end we check it against
# finite differences and against PyTorch.

# %%
import numpy as np

import minidiff as md
import minidiff.functional as F
from minidiff.autodiff import Tensor, Value, gradcheck

FAST = md.fast_mode()
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. One number at a time
#
# A `Value` holds a number, the Values it was made from, and a small function that passes a gradient
# back to them. For $c = \tanh(ab + a)$ the chain rule gives
# $\partial c/\partial a = (b + 1)(1 - c^2)$ and $\partial c/\partial b = a(1 - c^2)$:

# %%
a, b = Value(2.0), Value(-1.5)
c = (a * b + a).tanh()
c.backward()
print(c, a, b)
assert np.isclose(a.grad, (b.data + 1) * (1 - c.data**2))
assert np.isclose(b.grad, a.data * (1 - c.data**2))

# %% [markdown]
# `backward()` must visit a node only after every node that *uses* it has passed its gradient on, so
# it first orders the graph (a depth-first search, written with an explicit stack so that deep graphs
# do not hit Python's recursion limit) and then walks that order backwards. A Value used twice
# receives two contributions, which is why the backward functions *add* (`+=`) to `.grad`.

# %%
x = Value(3.0)
y = x * x + x  # x is used three times
y.backward()
print("dy/dx =", x.grad, "(expected 2x + 1 =", 2 * 3.0 + 1, ")")
assert x.grad == 7.0

# %% [markdown]
# ## 2. A tiny neuron, trained with Values
#
# One neuron $\tanh(w \cdot x + b)$ fitted by gradient descent to separate two clouds of points.
# Every gradient below comes from `backward()`.

# %%
points = rng.standard_normal((40, 2)) + np.where(rng.random((40, 1)) < 0.5, 1.5, -1.5)
labels = np.sign(points.sum(axis=1))
w = [Value(0.1), Value(-0.1)]
bias = Value(0.0)
for _step in range(30 if FAST else 100):
    loss = Value(0.0)
    for p, target in zip(points, labels, strict=True):
        out = (w[0] * p[0] + w[1] * p[1] + bias).tanh()
        loss = loss + (out - target) ** 2
    loss = loss / len(points)
    for v in (*w, bias):
        v.grad = 0.0
    loss.backward()
    for v in (*w, bias):
        v.data -= 0.5 * v.grad
accuracy = np.mean([np.sign((w[0] * p[0] + w[1] * p[1] + bias).data) == t for p, t in zip(points, labels, strict=True)])
print(f"loss {loss.data:.3f}, accuracy {accuracy:.2f}")
assert accuracy > 0.9

# %% [markdown]
# ## 3. Tensors: the same machine on arrays
#
# One `Value` per number is far too slow for images. A `Tensor` wraps a whole NumPy array; each
# operation is a `Function` whose `forward` computes on arrays and whose `backward` maps the gradient
# of the output to the gradients of the inputs, also on arrays. Read `minidiff/autodiff/ops.py`: every
# primitive has its forward and its backward side by side.
#
# **Broadcasting.** NumPy lets a `(3,)` bias be added to a `(4, 3)` batch: the bias is copied to
# every row. In the backward pass each copy receives its own gradient, and the bias's gradient is
# their *sum*: `sum_to_shape` (exercise 1.1) undoes broadcasting by summing over the stretched axes.
# It is the adjoint of broadcasting: $\langle \mathrm{broadcast}(x), g \rangle =
# \langle x, \mathrm{sum\_to\_shape}(g) \rangle$ for every $x$ and $g$.

# %%
batch = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
bias_t = Tensor(rng.standard_normal(3), requires_grad=True)
out = ((batch + bias_t) ** 2).sum()
out.backward()
print("bias.grad:", bias_t.grad)
assert np.allclose(bias_t.grad, (2 * (batch.data + bias_t.data)).sum(axis=0))

# %% [markdown]
# ## 4. Trust, but verify: gradcheck
#
# A backward pass is easy to get subtly wrong. `gradcheck` compares it with float64 central
# differences $\frac{f(x + h e_i) - f(x - h e_i)}{2h}$, whose error is $O(h^2)$, along a random
# direction of the output (a wrong Jacobian is caught by almost every direction).

# %%
xq = Tensor(rng.standard_normal((2, 3, 6, 5)), requires_grad=True)
wq = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
gq = Tensor(rng.standard_normal(4), requires_grad=True)
report = gradcheck(lambda x, w, g: F.silu(F.group_norm(F.conv2d(x, w, stride=2, padding=1), 2, g)), [xq, wq, gq])
print(report)
assert report.ok

# %% [markdown]
# ## 5. Side by side with PyTorch
#
# The same computation in PyTorch (when it is installed: it is a reference for the tests and
# benchmarks, never a dependency of minidiff) gives the same value and the same gradients, to the
# last bits of float64.

# %%
torch = md.optional_reference("torch", "the same gradients computed by PyTorch")

if torch is not None:
    arrays = [rng.standard_normal((2, 5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)]
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    loss_ours = F.log_softmax(F.gelu(F.linear(*ours)), axis=-1).mean()
    loss_ours.backward()
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    loss_theirs = torch.log_softmax(torch.nn.functional.gelu(torch.nn.functional.linear(*theirs)), -1).mean()
    loss_theirs.backward()
    worst = max(np.max(np.abs(o.grad - t.grad.numpy())) for o, t in zip(ours, theirs, strict=True))
    print(f"loss: minidiff {loss_ours.item():.15f}  PyTorch {loss_theirs.item():.15f}")
    print(f"largest gradient difference: {worst:.1e}")
    assert abs(loss_ours.item() - loss_theirs.item()) < 1e-12 and worst < 1e-12
else:
    print("PyTorch is not installed: pip install -e '.[torch]' to see the comparison")

# %% [markdown]
# ## 6. A small network, trained with tensors
#
# A two-layer perceptron on two interleaved half moons, trained by plain gradient descent. Only
# `minidiff` is involved: the forward pass records the graph, `backward()` fills every `.grad`.

# %%
n = 200 if FAST else 1000
angle = rng.uniform(0, np.pi, n)
upper = rng.random(n) < 0.5
xy = np.where(upper[:, None], np.c_[np.cos(angle), np.sin(angle)], np.c_[1 - np.cos(angle), 0.5 - np.sin(angle)])
xy += 0.1 * rng.standard_normal(xy.shape)
target = upper.astype(np.int64)


def init(fan_in, shape):  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / np.sqrt(fan_in)
    return Tensor(rng.uniform(-bound, bound, shape), requires_grad=True)


params = [init(2, (32, 2)), init(2, 32), init(32, (2, 32)), init(32, 2)]
for _step in range(150 if FAST else 500):
    w1, b1, w2, b2 = params
    logits = F.linear(F.relu(F.linear(Tensor(xy), w1, b1)), w2, b2)
    loss = F.cross_entropy(logits, target)
    for p in params:
        p.zero_grad()
    loss.backward()
    for p in params:
        p.data -= 0.5 * p.grad
accuracy = np.mean(logits.data.argmax(axis=1) == target)
print(f"final loss {loss.item():.3f}, training accuracy {accuracy:.2f}")
assert accuracy > 0.85

# %% [markdown]
# ## Exercises
#
# Open `minidiff/exercises/ch01.py`; each function there raises `NotImplementedError`. Write it, then
# grade your work with `pytest --student -m ch01` (or one at a time: `--exercise ex01.3`).
#
# - **1.1** `sum_to_shape`: undo broadcasting (the adjoint of `np.broadcast_to`).
# - **1.2** `Mul.backward`: the product rule, with broadcasting.
# - **1.3** `MatMul.backward`: $\partial/\partial A = G B^\top$, $\partial/\partial B = A^\top G$, batched.
# - **1.4** `softmax_backward_ref` (what `Softmax.backward` calls): apply the Jacobian $\mathrm{diag}(s) - s s^\top$
#   without building it.
# - **1.5** `scatter_windows`: the backward of reading convolution windows, which gives conv2d's
#   input gradient.
