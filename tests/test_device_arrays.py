"""md.Tensor holding CuPy arrays (issue 9), tested without a GPU.

tests/fakecupy.py stands in for CuPy: its arrays run NumPy underneath but refuse every implicit copy to the host
and every host array mixed into a device computation, as CuPy's do. With it installed and the "cuda-emu" backend
(the CUDA kernels emulated on the CPU), whole training steps and a sampler loop run with every parameter,
gradient and optimizer state on the "device", and must give the numbers of the same steps on NumPy arrays. What
CuPy itself computes is not tested here (see minidiff.backend.array_module).
"""

from __future__ import annotations

import fakecupy
import numpy as np
import pytest
from backends import require_backend
from models import mlp
from tolerances import assert_close

import minidiff as md
import minidiff.functional as F
from minidiff import backend, nn, optim
from minidiff.autodiff import ops
from minidiff.diffusion._validate import noise_for
from minidiff.kernels import _cuda
from minidiff.kernels.gemm import gemm
from minidiff.samplers import DDIMSampler

UNET = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            attention_head_dim=4, norm_num_groups=4, resnet_time_scale_shift="scale_shift", num_class_embeds=3)


@pytest.fixture
def cp(monkeypatch):
    """The fake cupy, installed for one test, on the cuda-emu backend."""
    require_backend("cuda-emu")
    cupy = fakecupy.install(monkeypatch)
    backend._cupy.cache_clear()  # backend.cupy_module() imports it anew
    with md.use_backend("cuda-emu"):
        yield cupy
    backend._cupy.cache_clear()


def _two_models(build, cp):
    """The same initial model twice: on the host, and moved to the device."""
    host, device = build(np.random.default_rng(0)), build(np.random.default_rng(0))
    return host, device.to("cuda")


def _train(model, make_optimizer, batches, loss_fn, xp) -> tuple[list[float], optim.Optimizer, optim.EMA]:
    """A few training steps: zero_grad, loss, backward, clipped gradients, optimizer step, EMA update."""
    optimizer, ema = make_optimizer(model.parameters()), optim.EMA(model, decay=0.5)
    losses = []
    for batch in batches:
        model.zero_grad()
        loss = loss_fn(model, *(xp.asarray(a) for a in batch))
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        ema.update(model)
        losses.append(loss.item())
    return losses, optimizer, ema


def _assert_same_training(build, make_optimizer, batches, loss_fn, cp) -> None:
    host, device = _two_models(build, cp)
    host_losses, _, host_ema = _train(host, make_optimizer, batches, loss_fn, np)
    device_losses, optimizer, ema = _train(device, make_optimizer, batches, loss_fn, cp)
    for p in device.parameters():
        assert isinstance(p.data, cp.ndarray) and isinstance(p.grad, cp.ndarray)
    states = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"] + [*ema.shadow.values()]
    assert states and all(isinstance(v, cp.ndarray) for v in states)
    assert_close(np.array(device_losses), np.array(host_losses), what="losses")
    for (name, p_host), p_device in zip(host.named_parameters(), device.parameters(), strict=True):
        assert_close(cp.asnumpy(p_device.data), p_host.data, what=name)
    for name, average in ema.state_dict().items():
        assert_close(average, host_ema.shadow[name], what=f"EMA of {name}")


def test_mlp_training_on_device_arrays_matches_numpy(cp):
    """Linear, SiLU, LayerNorm, GELU (erf), dropout, MSE; AdamW and gradient clipping."""
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((16, 2)), rng.standard_normal((16, 2))) for _ in range(3)]

    def loss_fn(model, x, y):
        return F.mse_loss(F.dropout(model(md.tensor(x)), 0.25, rng=np.random.default_rng(2)), md.tensor(y))

    _assert_same_training(mlp, lambda params: optim.AdamW(params, lr=1e-2), batches, loss_fn, cp)


def test_unet_training_on_device_arrays_matches_numpy(cp):
    """Convolutions (emulated CUDA kernels), group norm, attention, timestep and class embeddings; SGD momentum."""
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((2, 2, 8, 8)), rng.standard_normal((2, 2, 8, 8))) for _ in range(2)]

    def loss_fn(model, x, noise):
        return F.mse_loss(model(md.tensor(x), np.array([10, 500]), class_labels=np.array([0, 2])), md.tensor(noise))

    _assert_same_training(lambda rng: nn.UNet(**UNET, rng=rng, dtype=np.float64),
                          lambda params: optim.SGD(params, lr=0.1, momentum=0.9), batches, loss_fn, cp)


def test_ddim_sampler_loop_on_device_arrays_matches_numpy(cp):
    host, device = _two_models(lambda rng: nn.UNet(**UNET, rng=rng, dtype=np.float64).eval(), cp)
    rng = np.random.default_rng(4)
    x_T, noises = rng.standard_normal((2, 2, 8, 8)), rng.standard_normal((3, 2, 2, 8, 8))

    def run(model, xp):
        sampler = DDIMSampler(md.diffusion.NoiseSchedule(md.diffusion.linear_betas(1000)), eta=0.5)
        sampler.set_timesteps(3)
        x = xp.asarray(x_T)
        for t, noise in zip(sampler.timesteps, noises, strict=True):
            with md.no_grad():
                eps = model(md.tensor(x), t, class_labels=np.array([1, 1])).data
            x = sampler.step(eps, t, x, noise=xp.asarray(noise)).prev_sample
            assert isinstance(x, xp.ndarray)
        return x

    assert_close(cp.asnumpy(run(device, cp)), run(host, np), what="x_0")


def test_sample_from_a_device_x_T_runs_on_the_device_and_matches_numpy(cp):
    """Sampler.sample with x_T a CuPy array: the model's outputs, the steps' noise (drawn on the host by the same
    rng) and the trajectory stay on the device, and the numbers are the host run's."""
    host, device = _two_models(lambda rng: nn.UNet(**UNET, rng=rng, dtype=np.float64).eval(), cp)
    x_T = np.random.default_rng(5).standard_normal((2, 2, 8, 8))

    def run(model, xp):
        def eps_model(x, t):
            with md.no_grad():
                return model(md.tensor(x), t, class_labels=np.array([2, 0])).data

        sampler = DDIMSampler(md.diffusion.NoiseSchedule(md.diffusion.linear_betas(1000)), eta=1.0)
        return sampler.sample(eps_model, x_T.shape, np.random.default_rng(6), num_inference_steps=3,
                              x_T=xp.asarray(x_T), dtype=np.float64, progress=False, return_trajectory=True)

    trajectory = run(device, cp)
    assert isinstance(trajectory, cp.ndarray) and trajectory.shape == (4, *x_T.shape)
    noise = noise_for(cp.asarray(x_T), "sample", None, np.random.default_rng(6))  # what each step draws
    assert isinstance(noise, cp.ndarray)
    assert_close(cp.asnumpy(trajectory), run(host, np), what="x_T .. x_0")


def test_masked_attention_and_indexing_on_device_arrays_match_numpy(cp):
    """A boolean mask, integer class targets and embedding indices on the device; an index that repeats adds its
    gradients (the backward scatters with cupyx.scatter_add)."""
    rng = np.random.default_rng(6)
    q, logits, table = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 3)), rng.standard_normal((3, 2))
    mask, target, indices = rng.random((3, 3)) < 0.7, np.array([0, 2, 2, 1, 2]), np.array([1, 0, 1, 1])
    mask[:, 0] = True  # every query attends to some key

    def losses_and_grads(xp):
        leaves = [md.tensor(xp.asarray(a), requires_grad=True) for a in (q, logits, table)]
        attention = F.scaled_dot_product_attention(*leaves[:1] * 3, mask=xp.asarray(mask))
        picked = F.embedding(xp.asarray(indices), leaves[2])  # (4, 2)
        loss = (attention * attention).sum() + F.cross_entropy(leaves[1], xp.asarray(target)) + (picked**3).sum()
        loss.backward()
        return [cp.asnumpy(a) for a in (loss.data, *(t.grad for t in leaves))]

    for got, expected, what in zip(losses_and_grads(cp), losses_and_grads(np),
                                   ("loss", "grad q", "grad logits", "grad table"), strict=True):
        assert_close(got, expected, what=what)


def test_module_to_moves_parameters_buffers_and_gradients_and_back(cp):
    model = mlp(np.random.default_rng(5))
    model.register_buffer("steps", np.arange(3.0))
    before = model.state_dict()
    model[0].weight.grad = np.ones_like(model[0].weight.data)
    model.to("cuda")
    assert all(isinstance(t.data, cp.ndarray) for t in (*model.parameters(), *model.buffers()))
    assert isinstance(model[0].weight.grad, cp.ndarray)
    state = model.state_dict()  # host copies
    assert state.keys() == before.keys()
    for name, array in state.items():
        assert type(array) is np.ndarray
        assert_close(array, before[name], what=name)
    model.load_state_dict({k: v + 1 for k, v in before.items()})  # host values into device arrays
    assert all(isinstance(p.data, cp.ndarray) for p in model.parameters())
    model.to("cpu")
    assert all(type(t.data) is np.ndarray for t in (*model.parameters(), *model.buffers()))
    for name, array in model.state_dict().items():
        assert_close(array, before[name] + 1, what=name)
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        model.to("gpu")


def test_launch_copies_back_exactly_the_arguments_named_in_writes(cp):
    """The emulator runs a kernel on host copies of device arrays; launch copies back the positions in `writes`
    and no others. So a wrapper that leaves out an output reads stale values here, as NumPy callers would on a GPU
    (where the copies go the other way)."""
    x, eps = cp.asarray(np.arange(5.0, dtype=np.float32)), cp.asarray(np.full(5, 2.0, np.float32))
    coefs = np.float32(1), np.float32(-1), *(np.float32(0),) * 5  # out = x - eps: c_x, c_eps, c_z, c_x0, r_x, ...
    for writes, expected in (((3,), np.arange(5.0) - 2.0), ((), np.full(5, 7.0))):
        out = cp.asarray(np.full(5, 7.0, np.float32))
        args = (x, eps, x, out, np.int64(5), *coefs, np.int32(0), np.int32(0))  # no z (x in its place), no clip
        _cuda.launch("cuda-emu", "sampler_step.cu", "sampler_step_kernel<float>", *_cuda.launch_config_1d(5), args,
                     writes=writes)
        np.testing.assert_array_equal(cp.asnumpy(out), expected, err_msg=f"writes={writes}")
    np.testing.assert_array_equal(cp.asnumpy(x), np.arange(5.0))  # the inputs, read only, as they were


def test_gemm_kernel_on_device_arrays_matches_numpy(cp):
    """The one CUDA kernel the models above do not run (md.Tensor's matmul is the array library's): out is written
    in place on the device, C = alpha A B + beta C."""
    rng = np.random.default_rng(7)
    a, b, c = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    out = cp.asarray(c)
    assert gemm(cp.asarray(a), cp.asarray(b), out, alpha=2.0, beta=0.5) is out
    assert_close(cp.asnumpy(out), 2.0 * a @ b + 0.5 * c, what="C")


def test_the_fake_refuses_host_round_trips(cp, monkeypatch):
    """A host copy slipped onto the path (np.asarray where as_array belongs) fails loudly, as it would on CuPy;
    so does mixing a host array into a device computation."""
    x = md.tensor(cp.asarray(np.arange(4.0)), requires_grad=True)
    (x * x).sum().backward()
    assert isinstance(x.grad, cp.ndarray)
    assert_close(cp.asnumpy(x.grad), 2 * np.arange(4.0))
    monkeypatch.setattr(ops, "as_array", np.asarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        x + x
    with pytest.raises(TypeError, match="Unsupported type"):
        x.data * np.ones(4)
    assert "tensor([0., 1., 2., 3.]" in repr(x)  # printing copies to the host explicitly
