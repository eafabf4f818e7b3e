"""The networks (E43-E46) against their references: the sinusoidal embedding against its closed form and
diffusers' get_timestep_embedding; the residual block with AdaGN, the attention blocks and the whole UNet
against diffusers' own ResnetBlock2D, Attention and UNet2DModel (same state dict keys, weights moved by
state dict, outputs and the gradients of inputs and parameters compared, float64 and float32); the
MLPDenoiser against a PyTorch twin; cross-attention inside the UNet by exact properties and central
differences; and the errors bad arguments get."""

from __future__ import annotations

import numpy as np
import pytest
from tolerances import assert_close

from minidiff.autodiff import Tensor, gradcheck
from minidiff.nn.attention import CrossAttention, SelfAttention2d
from minidiff.nn.embedding import SinusoidalTimestepEmbedding, TimestepEmbedding, timestep_embedding
from minidiff.nn.mlp import MLPDenoiser
from minidiff.nn.unet import ResBlock, UNet

# --- helpers ---------------------------------------------------------------------------------------------


def numpy_state(twin) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in twin.state_dict().items()}


def load_twin_weights(ours, twin, dtype) -> None:
    """Move the twin's (diffusers' random) initialization into minidiff, rounded to dtype."""
    ours.load_state_dict({k: v.astype(dtype) for k, v in numpy_state(twin).items()}, strict=True)


def run_ours(module, arrays: dict[str, np.ndarray], constants: dict, dtype, upstream_seed: int = 1):
    """Forward with the float arrays as tensors requiring grad, backward a fixed random upstream gradient:
    (output, {input name: grad}, {parameter name: grad}, upstream)."""
    tensors = {k: Tensor(v.astype(dtype), requires_grad=True) for k, v in arrays.items()}
    out = module(**tensors, **constants)
    upstream = np.random.default_rng(upstream_seed).standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    return (out.data, {k: t.grad for k, t in tensors.items()},
            {k: p.grad for k, p in module.named_parameters()}, upstream)


def run_twin(twin, call, arrays: dict[str, np.ndarray], dtype, upstream: np.ndarray):
    """call(**inputs) runs the twin in float64 on the inputs minidiff got (rounded to dtype)."""
    import torch

    tensors = {k: torch.tensor(v.astype(dtype).astype(np.float64), requires_grad=True) for k, v in arrays.items()}
    out = call(**tensors)
    out = getattr(out, "sample", out)
    out.backward(torch.from_numpy(upstream.astype(np.float64)))
    return (out.detach().numpy(), {k: t.grad.numpy() for k, t in tensors.items()},
            {k: p.grad.numpy() for k, p in twin.named_parameters()})


def compare_with_twin(ours, twin, call, arrays, ours_constants, dtype):
    """Output, input gradients and every parameter gradient.

    float64: the output and the input gradients elementwise; a parameter's
    gradient, a sum over the batch and the pixels that can cancel to an element far smaller than its terms,
    relative to its largest element. float32 (against the float64 twin): every array relative to its largest
    element, to the float32 table."""
    out, grads, param_grads, upstream = run_ours(ours, arrays, ours_constants, dtype)
    ref_out, ref_grads, ref_param_grads = run_twin(twin, call, arrays, dtype, upstream)
    assert out.dtype == dtype
    assert set(param_grads) == set(ref_param_grads)
    elementwise = [("output", out, ref_out), *((f"grad of {k}", grads[k], ref_grads[k]) for k in grads)]
    per_array = [(f"grad of {k}", param_grads[k], ref_param_grads[k]) for k in param_grads]
    if dtype == np.float32:
        elementwise, per_array = [], elementwise + per_array
    for what, got, ref in elementwise:
        assert_close(got, ref, dtype=dtype, what=what)
    for what, got, ref in per_array:
        assert_close(got, ref, dtype=dtype, scale=np.full(ref.shape, np.abs(ref).max()), what=what)


# --- [E43] the sinusoidal timestep embedding ----------------------------------------------------------------


@pytest.mark.exercise("ex07.1")
def test_timestep_embedding_E43_closed_form():
    """dim 4, freq_shift 1: h = 2 frequencies exp(-ln(10^4) i / (h - 1)) = 1 and 1e-4, so
    emb(t) = [sin t, sin(1e-4 t), cos t, cos(1e-4 t)]; flipped: cosines first; odd dim: a zero column."""
    t = np.array([0, 1, 2.5, 999])
    expected = np.stack([np.sin(t), np.sin(1e-4 * t), np.cos(t), np.cos(1e-4 * t)], axis=1)
    assert_close(timestep_embedding(t, 4), expected, what="emb (dim 4: [sin t, sin 1e-4 t, cos t, cos 1e-4 t])")
    assert_close(timestep_embedding(t, 4, flip_sin_to_cos=True), expected[:, [2, 3, 0, 1]],
                 what="flip_sin_to_cos (cosines first)")
    odd = timestep_embedding(t, 5)
    assert odd.shape == (4, 5), f"dim 5: expected shape (4, 5), got {odd.shape}"
    assert_close(odd[:, :4], expected, what="odd dim, first 4 columns")
    assert np.array_equal(odd[:, 4], np.zeros(4)), "odd dim: the last column must be zeros"
    # freq_shift 0, max_period 100, dim 6: frequencies 100^(-i/3) = 1, 100^(-1/3), 100^(-2/3)
    freqs = 100.0 ** (-np.arange(3) / 3)
    assert_close(timestep_embedding(t, 6, freq_shift=0, max_period=100),
                 np.concatenate([np.sin(np.outer(t, freqs)), np.cos(np.outer(t, freqs))], axis=1),
                 what="freq_shift 0, max_period 100 (frequencies 100^(-i/3))")
    emb = SinusoidalTimestepEmbedding(4, dtype=np.float32)(t)
    assert emb.dtype == np.float32 and not emb.requires_grad \
        and np.array_equal(emb.data, expected.astype(np.float32)), \
        "SinusoidalTimestepEmbedding: expected the float32 rounding of emb(t), a constant (no grad)"


@pytest.mark.torch
@pytest.mark.exercise("ex07.1")
@pytest.mark.parametrize(("dim", "flip", "shift"), [(32, False, 1), (32, True, 0), (7, True, 1), (10, False, 0.5)])
def test_timestep_embedding_E43_matches_diffusers(dim, flip, shift):
    """diffusers computes in float32: its angle t w_i carries ~ulp(t w_i) error, so the scale is t."""
    import torch
    from diffusers.models.embeddings import get_timestep_embedding
    from reference.torch_unet import TimestepsInDtype

    t = np.array([1, 17, 250.5, 1000])
    ours = timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
    theirs = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert_close(ours, theirs.numpy(), dtype=np.float32, scale=np.broadcast_to(t[:, None], ours.shape))
    # the float64 formula the UNet twin uses in place of diffusers' float32 one
    twin = TimestepsInDtype(dim, flip, shift, torch.float64)(torch.from_numpy(t)).numpy()
    assert_close(ours, twin)


@pytest.mark.torch
def test_timestep_embedding_mlp_matches_diffusers():
    import torch
    from diffusers.models.embeddings import TimestepEmbedding as Twin

    twin = Twin(6, 24).to(torch.float64)
    ours = TimestepEmbedding(6, 24, rng=np.random.default_rng(0), dtype=np.float64)
    load_twin_weights(ours, twin, np.float64)
    arrays = {"emb": np.random.default_rng(2).standard_normal((3, 6))}
    compare_with_twin(ours, twin, lambda emb: twin(emb), arrays, {}, np.float64)


# --- [E44] the residual block ----------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.exercise("ex07.2")
@pytest.mark.parametrize(("shift", "in_channels", "out_channels"), [("default", 6, 6), ("scale_shift", 6, 9),
                                                                    ("default", 9, 3)])
def test_resblock_E44_adagn_matches_diffusers_resnet_block(shift, in_channels, out_channels):
    """ResnetBlock2D: "default" adds the embedding before norm2; "scale_shift" is AdaGN (E44); a 1x1 shortcut
    when the channel count changes; output divided by output_scale_factor."""
    from diffusers.models.resnet import ResnetBlock2D

    twin = ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=5, groups=3, eps=1e-5,
                         time_embedding_norm=shift, output_scale_factor=1.5).double()
    ours = ResBlock(in_channels, out_channels, 5, groups=3, time_scale_shift=shift, output_scale_factor=1.5,
                    rng=np.random.default_rng(0), dtype=np.float64)
    assert list(ours.state_dict()) == list(twin.state_dict())
    load_twin_weights(ours, twin, np.float64)
    rng = np.random.default_rng(3)
    arrays = {"x": rng.standard_normal((2, in_channels, 5, 4)), "temb": rng.standard_normal((2, 5))}
    compare_with_twin(ours, twin, lambda x, temb: twin(x, temb), arrays, {}, np.float64)


# --- [E45] attention -------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.exercise("ex07.3")
@pytest.mark.parametrize(("channels", "head_dim", "groups", "context_dim"), [
    (8, 4, 2, None),  # two heads
    (6, None, 3, None),  # one head of all channels
    (12, 8, None, None),  # one head of 8 < 12 channels (inner dim 8), no norm (the scale_shift mid block)
    (8, 2, 4, 5),  # cross-attention, four heads
    (6, None, 1, 3),
])
def test_attention_E45_matches_diffusers_attention(channels, head_dim, groups, context_dim):
    from reference.torch_unet import attention_twin

    twin = attention_twin(channels, head_dim, groups, 1e-5, 2.0, context_dim)
    rng = np.random.default_rng(4)
    arrays = {"x": rng.standard_normal((2, channels, 3, 5))}
    if context_dim is None:
        ours = SelfAttention2d(channels, head_dim, groups, rescale_output_factor=2.0, dtype=np.float64)
        call = lambda x: twin(x)  # noqa: E731
    else:
        ours = CrossAttention(channels, context_dim, head_dim, groups, rescale_output_factor=2.0, dtype=np.float64)
        arrays["context"] = rng.standard_normal((2, 4, context_dim))
        call = lambda x, context: twin(x, encoder_hidden_states=context)  # noqa: E731
    assert list(ours.state_dict()) == list(twin.state_dict())
    load_twin_weights(ours, twin, np.float64)
    compare_with_twin(ours, twin, call, arrays, {}, np.float64)


def conv1x1(x, weight, bias):
    return np.einsum("oi,bihw->bohw", weight[:, :, 0, 0], x) + bias[None, :, None, None]


@pytest.mark.exercise("ex07.2")
def test_resblock_E44_closed_forms():
    """AdaGN with scale = -1, shift = 0 zeroes the normalized features: out = (shortcut(x) + conv2's bias) / factor
    (checks the (1 + scale), which half is the scale, the shortcut and the factor). "default" with one channel
    per group: the embedding, a per-channel constant added before norm2, is normalized away."""
    rng = np.random.default_rng(0)
    x, temb = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 7))
    block = ResBlock(3, 6, 7, groups=3, time_scale_shift="scale_shift", output_scale_factor=1.5,
                     rng=np.random.default_rng(1), dtype=np.float64)
    state = block.state_dict()
    state["time_emb_proj.weight"] = np.zeros((12, 7))
    state["time_emb_proj.bias"] = np.concatenate([-np.ones(6), np.zeros(6)])  # scale = -1, shift = 0
    block.load_state_dict(state)
    out = block(Tensor(x), Tensor(temb)).data
    assert out.shape == (2, 6, 4, 5), f"expected output (2, 6, 4, 5), got {out.shape}"
    expected = (conv1x1(x, state["conv_shortcut.weight"], state["conv_shortcut.bias"])
                + state["conv2.bias"][None, :, None, None]) / 1.5
    assert_close(out, expected, what="AdaGN with scale -1, shift 0: (shortcut(x) + conv2 bias) / output_scale_factor")

    plain = ResBlock(6, 6, 7, groups=6, rng=np.random.default_rng(2), dtype=np.float64)
    y = rng.standard_normal((2, 6, 4, 5))
    a, b = plain(Tensor(y), Tensor(temb)).data, plain(Tensor(y), Tensor(5 * temb + 1)).data
    assert not np.allclose(a, y), "the block returned its input: the residual branch is missing"
    assert_close(a, b, what='"default" with one channel per group: the embedding must be added before norm2')


def attention_by_hand(x, state, heads, groups, context=None, factor=1.0):
    """[E45] per head: softmax(Q K^T / sqrt(d)) V over the pixels, then to_out, the residual, the factor."""
    b, c, h, w = x.shape
    normed = x
    if groups is not None:
        g = x.reshape(b, groups, -1)
        g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)
        normed = g.reshape(x.shape) * state["group_norm.weight"][None, :, None, None] \
            + state["group_norm.bias"][None, :, None, None]
    tokens = normed.reshape(b, c, h * w).transpose(0, 2, 1)  # (B, HW, C)
    source = tokens if context is None else context
    q, k, v = (s @ state[f"to_{n}.weight"].T + state[f"to_{n}.bias"] for n, s in (("q", tokens), ("k", source),
                                                                                 ("v", source)))
    d = q.shape[-1] // heads
    outs = []
    for i in range(heads):
        qi, ki, vi = (a[..., i * d:(i + 1) * d] for a in (q, k, v))
        scores = qi @ ki.transpose(0, 2, 1) / np.sqrt(d)  # (B, HW, L)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        outs.append(p / p.sum(-1, keepdims=True) @ vi)
    out = np.concatenate(outs, axis=-1) @ state["to_out.0.weight"].T + state["to_out.0.bias"]  # (B, HW, C)
    return (out.transpose(0, 2, 1).reshape(x.shape) + x) / factor


@pytest.mark.exercise("ex07.3")
@pytest.mark.parametrize(("channels", "head_dim", "groups", "context_dim"), [
    (8, 4, 2, None), (6, None, None, None), (8, 2, 4, 5)])
def test_attention_E45_closed_form(channels, head_dim, groups, context_dim):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, channels, 3, 5))
    if context_dim is None:
        module = SelfAttention2d(channels, head_dim, groups, rescale_output_factor=2.0,
                                 rng=np.random.default_rng(0), dtype=np.float64)
        context, out = None, module(Tensor(x))
    else:
        module = CrossAttention(channels, context_dim, head_dim, groups, rescale_output_factor=2.0,
                                rng=np.random.default_rng(0), dtype=np.float64)
        context = rng.standard_normal((2, 4, context_dim))
        out = module(Tensor(x), Tensor(context))
    heads = 1 if head_dim is None else channels // head_dim
    expected = attention_by_hand(x, module.state_dict(), heads, groups, context, 2.0)
    assert_close(out.data, expected, what=f"attention ({heads} heads, {'cross' if context_dim else 'self'}): "
                 "(x + to_out(softmax(Q K^T / sqrt(d)) V)) / rescale_output_factor")


# --- [E46] the UNet against diffusers' UNet2DModel ----------------------------------------------------------------

CONFIGS = {
    "default, attention at the low level": dict(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, norm_num_groups=4, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1),
    "scale_shift, classes, odd channels, attention at the top, padding 0": dict(
        sample_size=8, in_channels=2, out_channels=1, block_out_channels=(9, 15), layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=5, norm_num_groups=3, resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False,
        freq_shift=1, downsample_padding=0, num_class_embeds=4),
    "three levels, two layers, one head, mid scale": dict(
        sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 8, 12), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None, norm_num_groups=4,
        norm_eps=1e-4, mid_block_scale_factor=2.0, num_class_embeds=3, dropout=0.2),
}


def make_pair(config, dtype):
    """A minidiff UNet and its diffusers twin (float64) holding the twin's random initialization, both in
    eval mode (dropout off)."""
    from reference.torch_unet import unet_twin

    ours = UNet(**config, rng=np.random.default_rng(0), dtype=dtype)
    twin = unet_twin(ours.config)
    load_twin_weights(ours, twin, dtype)
    return ours.eval(), twin.eval()


def unet_inputs(config, seed=5):
    import torch

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, config["in_channels"], 8, 8))
    ours, theirs = {"t": np.array([1, 999])}, {"timestep": torch.tensor([1, 999])}
    if config.get("num_class_embeds"):
        labels = np.array([0, config["num_class_embeds"] - 1])
        ours["class_labels"], theirs["class_labels"] = labels, torch.from_numpy(labels)
    return {"x": x}, ours, theirs


@pytest.mark.torch
@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_E46_has_diffusers_keys_and_parameter_count(name):
    """The key-mapping promise: the same state dict keys, in the same order, with the same shapes."""
    ours, twin = make_pair(CONFIGS[name], np.float64)
    state, theirs = ours.state_dict(), numpy_state(twin)
    assert list(state) == list(theirs)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in theirs.items()}
    assert ours.num_parameters() == sum(p.numel() for p in twin.parameters())


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_E46_matches_diffusers_unet2dmodel(name, dtype):
    """Outputs and the gradients of the input and of every parameter: float64 to the float64 table (1e-11
    relative, tighter than the 1e-9 asked), float32 against the float64 twin to the float32 table, relative to
    each array's largest element. (A to_k bias has an exactly zero gradient, softmax being blind to a shift
    shared by all keys: both sides hold rounding noise there, which the absolute tolerance absorbs.)"""
    config = CONFIGS[name]
    ours, twin = make_pair(config, dtype)
    arrays, ours_kw, twin_kw = unet_inputs(config)

    compare_with_twin(ours, twin, lambda x: twin(x, **twin_kw), arrays, ours_kw, dtype)


def test_unet_E46_ddpm_cifar10_config_has_the_checkpoints_parameter_count():
    """google/ddpm-cifar10-32's UNet2DModel config has 35,746,307 parameters (REFERENCES.md)."""
    unet = UNet(sample_size=32, block_out_channels=(128, 256, 256, 256),
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                flip_sin_to_cos=False, freq_shift=1, rng=np.random.default_rng(0))
    assert unet.num_parameters() == 35_746_307


# --- cross-attention inside the UNet (no diffusers counterpart) ------------------------------------------------

CROSS = dict(CONFIGS["default, attention at the low level"], cross_attention_dim=3)


def test_unet_cross_attention_with_zero_output_projection_is_the_plain_unet():
    """A CrossAttention whose to_out is zero adds nothing to its residual, so the UNet equals the same UNet
    without cross-attention, bit for bit, whatever the context."""
    rng = np.random.default_rng(6)
    crossed = UNet(**CROSS, rng=rng, dtype=np.float64)
    plain = UNet(**CONFIGS["default, attention at the low level"], rng=rng, dtype=np.float64)
    state = crossed.state_dict()
    assert any(".cross_attentions." in k for k in state)
    plain.load_state_dict({k: v for k, v in state.items() if ".cross_attentions." not in k})
    for name, p in crossed.named_parameters():
        if ".cross_attentions." in name and ".to_out." in name:
            p.data[...] = 0.0
    x, t = Tensor(rng.standard_normal((2, 3, 8, 8))), np.array([3, 40])
    context = Tensor(rng.standard_normal((2, 4, 3)))
    assert np.array_equal(crossed(x, t, context=context).data, plain(x, t).data)


def test_unet_context_gradient_matches_central_differences():
    rng = np.random.default_rng(7)
    unet = UNet(**CROSS, rng=rng, dtype=np.float64)
    x, t = Tensor(rng.standard_normal((1, 3, 8, 8))), np.array([500])
    context = Tensor(rng.standard_normal((1, 2, 3)), requires_grad=True)
    report = gradcheck(lambda c: unet(x, t, context=c), [context])
    assert report.ok and np.abs(context.grad).max() > 1e-3, "the context must reach the output"


# --- MLPDenoiser ------------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("num_classes", [None, 3])
def test_mlp_denoiser_matches_its_torch_twin(num_classes):
    import torch
    from reference.torch_unet import MLPDenoiserTwin

    twin = MLPDenoiserTwin(2, 16, 3, 8, num_classes)
    ours = MLPDenoiser(2, 16, 3, 8, num_classes, rng=np.random.default_rng(0), dtype=np.float64)
    assert list(ours.state_dict()) == list(twin.state_dict())
    assert ours.num_parameters() == sum(p.numel() for p in twin.parameters())
    load_twin_weights(ours, twin, np.float64)
    t = np.array([1, 250, 999, 0.5])
    ours_kw, twin_kw = {"t": t}, {"t": torch.from_numpy(t)}
    if num_classes:
        labels = np.array([0, 2, 1, 2])
        ours_kw["class_labels"], twin_kw["class_labels"] = labels, torch.from_numpy(labels)
    arrays = {"x": np.random.default_rng(8).standard_normal((4, 2))}
    compare_with_twin(ours, twin, lambda x: twin(x, **twin_kw), arrays, ours_kw, np.float64)


# --- bad input ----------------------------------------------------------------------------------------------------

SMALL = CONFIGS["scale_shift, classes, odd channels, attention at the top, padding 0"]


@pytest.mark.parametrize(("changes", "message"), [
    (dict(block_out_channels=(8, 12)), "norm_num_groups: 3 must divide every block_out_channels entry, not"),
    (dict(down_block_types=("DownBlock2D",)), "down_block_types: expected 2 entries"),
    (dict(up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), "up_block_types: expected 2 entries .* from"),
    (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift: expected one of"),
    (dict(downsample_padding=2), "downsample_padding: expected 0 or 1"),
    (dict(layers_per_block=0), "layers_per_block: expected a positive int"),
    (dict(attention_head_dim=16), "attention_head_dim: expected at most channels = 9"),
    (dict(num_class_embeds=0), "num_class_embeds: expected a positive int"),
])
def test_unet_rejects_bad_configs(changes, message):
    with pytest.raises(ValueError, match=message):
        UNet(**{**SMALL, **changes})


def test_unet_rejects_bad_inputs_and_reserves_the_last_class_as_null_label():
    unet = UNet(**SMALL, rng=np.random.default_rng(0))
    x = Tensor(np.zeros((2, 2, 8, 8), np.float32))
    assert unet.null_class_label == 3
    with pytest.raises(ValueError, match=r"x: expected a Tensor \(B, 2, H, W\) with H and W divisible by 2"):
        unet(Tensor(np.zeros((2, 2, 7, 8), np.float32)), 5, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"t: expected a number or 2 int or float timesteps \(B,\)"):
        unet(x, np.array([1, 2, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"class_labels: expected 2 integer labels in \[0, 4\)"):
        unet(x, 5)
    with pytest.raises(ValueError, match=r"class_labels: expected 2 integer labels in \[0, 4\)"):
        unet(x, 5, np.array([0, 4]))
    with pytest.raises(ValueError, match="context: this UNet has no cross-attention"):
        unet(x, 5, np.array([0, 1]), context=Tensor(np.zeros((2, 1, 3), np.float32)))
    plain = UNet(**CONFIGS["default, attention at the low level"], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="class_labels: this UNet is not class-conditional"):
        plain(Tensor(np.zeros((1, 3, 8, 8), np.float32)), 5, np.array([0]))
    with pytest.raises(ValueError, match="num_class_embeds: this UNet is not class-conditional"):
        _ = plain.null_class_label
    crossed = UNet(**CROSS, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"context: expected a Tensor \(B, L, 3\)"):
        crossed(Tensor(np.zeros((1, 3, 8, 8), np.float32)), 5)
    with pytest.raises(ValueError, match=r"context: expected a Tensor \(B=1, L, 3\), got \(1, 2, 4\)"):
        crossed(Tensor(np.zeros((1, 3, 8, 8), np.float32)), 5, context=Tensor(np.zeros((1, 2, 4), np.float32)))


def test_embedding_and_mlp_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"t: expected a 1-D array of int or float timesteps \(B,\)"):
        timestep_embedding(np.zeros((2, 2)), 8)
    with pytest.raises(ValueError, match="freq_shift: must differ from dim // 2 = 1"):
        timestep_embedding(np.zeros(2), 2, freq_shift=1)
    mlp = MLPDenoiser(hidden=8, layers=1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x: expected a Tensor \(B, 2\)"):
        mlp(Tensor(np.zeros((3, 3), np.float32)), 1)
    with pytest.raises(ValueError, match="class_labels: expected labels exactly when num_classes is set"):
        mlp(Tensor(np.zeros((3, 2), np.float32)), 1, np.array([0, 0, 0]))
    with pytest.raises(ValueError, match=r"x: expected a Tensor \(B, 4, H, W\)"):
        SelfAttention2d(4, norm_num_groups=2)(Tensor(np.zeros((1, 3, 2, 2), np.float32)))
