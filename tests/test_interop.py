"""minidiff.interop against diffusers 0.42.1: folders written by diffusers' save_pretrained load into minidiff and
compute what diffusers computes (the DDPM CIFAR-10 U-Net, 35.7M parameters, on the NumPy and C++ paths; a small
scale_shift, class-conditional, multi-head one; the older attention key layout; float16 weights), whole DDIM and
DDPM runs equal diffusers' pipelines from the same noise, a minidiff U-Net trained a few steps and exported is
loaded by diffusers and gives the same outputs, and everything minidiff does not implement is refused by name.

minidiff calls its U-Net at t = k + 1 where diffusers calls its at k: every comparison below calls minidiff at
t and diffusers at t - 1 (a U-Net called at the wrong count is off by several percent)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from backends import require_backend
from tolerances import DIFFUSERS_MODEL, assert_close

import minidiff as md
from minidiff import checkpoint
from minidiff.autodiff import Tensor
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.interop import load_diffusers, save_diffusers, shift_time_embedding
from minidiff.nn.mlp import MLPDenoiser
from minidiff.nn.unet import UNet
from minidiff.samplers import DDIMSampler, DDPMSampler, EulerSampler

pytestmark = pytest.mark.torch

# google/ddpm-cifar10-32's UNet2DModel configuration (REFERENCES.md): 35,746,307 parameters.
CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
               layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
               norm_num_groups=32, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)
CIFAR10_PARAMETERS = 35_746_307
# Small: AdaGN (scale_shift) time conditioning, class embeddings, two and four attention heads.
SMALL = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
             down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
             attention_head_dim=4, norm_num_groups=4, resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False,
             freq_shift=1, downsample_padding=0, num_class_embeds=3)
UNCONDITIONAL = {**SMALL, "num_class_embeds": None}  # what diffusers' pipelines sample


# --- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread():
    """PyTorch on one thread, as NumPy's BLAS is here (conftest): on the shared 2-core machine its second thread
    mostly waits, several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def diffusers_unet(config, seed=0):
    """diffusers' UNet2DModel with its seeded random initialization, every 1-D parameter (group norm scales and
    shifts, biases, which diffusers starts at 1 or 0) moved by N(0, 0.1^2) so that none is trivial."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in unet.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return unet


def diffusers_output(unet, x, k, class_labels=None):
    import torch

    labels = None if class_labels is None else torch.from_numpy(class_labels)
    with torch.no_grad():
        return unet(torch.from_numpy(x), torch.from_numpy(k), class_labels=labels).sample.numpy()


def minidiff_output(unet, x, t, class_labels=None):
    with md.no_grad():
        return unet(Tensor(x), t, class_labels).data


def assert_same_function(ours, theirs, x, ks, class_labels=None, what=""):
    """minidiff at t = k + 1 against diffusers at k, to DIFFUSERS_MODEL relative to the output's largest value."""
    for k in ks:
        ref = diffusers_output(theirs, x, k, class_labels)
        got = minidiff_output(ours, x, k + 1, class_labels)
        assert_close(got, ref, scale=np.full(ref.shape, np.abs(ref).max()), tol=DIFFUSERS_MODEL,
                     what=f"{what} at k = {k}")


def assert_same_weights_but_the_time_layer(loaded, theirs):
    """Every tensor of the file, bit for bit, but time_embedding.linear_1.weight (rotated to minidiff's count)."""
    state = loaded.state_dict()
    expected = {k: v.detach().float().numpy() for k, v in theirs.state_dict().items()}
    assert list(state) == list(expected)
    changed = [k for k in expected if not np.array_equal(state[k], expected[k])]
    assert changed == ["time_embedding.linear_1.weight"], changed


def inputs(config, batch, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, config["in_channels"], config["sample_size"], config["sample_size"]))
    labels = rng.integers(0, config["num_class_embeds"], batch) if config.get("num_class_embeds") else None
    return x.astype(np.float32), labels


# --- the count of time ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [{"flip_sin_to_cos": True, "freq_shift": 0},  # [cos, sin]
                                     {"block_out_channels": (9, 15), "norm_num_groups": 3, "attention_head_dim": 5}])
def test_shift_time_embedding_E43_is_a_shift_of_the_timestep(changes):
    """[E43] emb(t + d) is a rotation of emb(t), folded into time_embedding.linear_1: the U-Net with the shifted
    state at t equals the original at t + d, for whole and fractional d, both orders of sin and cos, an odd
    embedding width (its zero column), float64."""
    rng = np.random.default_rng(2)
    original = UNet(**{**SMALL, **changes}, rng=rng, dtype=np.float64)
    shifted = UNet(**{**SMALL, **changes}, dtype=np.float64)
    x, labels = inputs(SMALL, 2)
    x, t = x.astype(np.float64), np.array([3.0, 700.0])
    for d in (1, -1, 2.5):
        shifted.load_state_dict(shift_time_embedding(original.state_dict(), original.config, d))
        assert_close(minidiff_output(shifted, x, t, labels), minidiff_output(original, x, t + d, labels),
                     what=f"shifted by {d}")


# --- loading diffusers' folders ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """(diffusers' CIFAR-10 U-Net, minidiff's load of the folder its save_pretrained wrote)."""
    theirs = diffusers_unet(CIFAR10)
    folder = tmp_path_factory.mktemp("cifar10")
    theirs.save_pretrained(folder)
    return theirs, load_diffusers(folder)


def test_ddpm_cifar10_config_loads_with_the_same_weights_and_parameter_count(cifar10):
    theirs, pipe = cifar10
    assert pipe.sampler is None and pipe.config["block_out_channels"] == list(CIFAR10["block_out_channels"])
    assert pipe.unet.num_parameters() == sum(p.numel() for p in theirs.parameters()) == CIFAR10_PARAMETERS
    assert_same_weights_but_the_time_layer(pipe.unet, theirs)


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_ddpm_cifar10_config_outputs_equal_diffusers(cifar10, backend):
    """[E46] Random inputs at timesteps across the chain (two per batch), the 35.7M-parameter U-Net."""
    require_backend(backend)
    theirs, pipe = cifar10
    x, _ = inputs(CIFAR10, 2)
    with md.use_backend(backend):
        assert_same_function(pipe.unet, theirs, x, [np.array([0, 999]), np.array([250, 613])], what=backend)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    theirs = diffusers_unet(SMALL)
    folder = tmp_path_factory.mktemp("small")
    theirs.save_pretrained(folder)
    return theirs, folder


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_small_scale_shift_class_conditional_multihead_config_equals_diffusers(small, backend):
    """[E44][E45] AdaGN conditioning, class embeddings added to the time embedding, 2 and 4 heads."""
    require_backend(backend)
    theirs, folder = small
    pipe = load_diffusers(folder)
    assert pipe.unet.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert_same_weights_but_the_time_layer(pipe.unet, theirs)
    x, labels = inputs(SMALL, 3)
    with md.use_backend(backend):
        assert_same_function(pipe.unet, theirs, x, [np.array([0, 17, 999])], labels, what=backend)


def old_layout(key: str) -> str:
    """A key of the older attention layout: to_q, to_k, to_v, to_out.0 named query, key, value, proj_attn."""
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
        key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.").replace(
            f".attentions.1.{new}.", f".attentions.1.{old}.")
    return key


def test_older_attention_key_layout_loads_as_diffusers_loads_it(small, tmp_path):
    """The file's attention keys renamed query/key/value/proj_attn (which diffusers itself converts on load),
    then once more with the projections' weights as 1x1 convolutions (C, C, 1, 1): the same UNet."""
    from diffusers import UNet2DModel

    folder = small[1]
    modern = load_diffusers(folder).unet.state_dict()
    state = checkpoint.load(folder / "diffusion_pytorch_model.safetensors")
    renamed = {old_layout(k): v for k, v in state.items()}
    assert sum(k != old_layout(k) for k in state) == 4 * 8, "4 attentions (down, 2 up, mid), 4 projections, w and b"
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    checkpoint.save(renamed, tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = load_diffusers(tmp_path).unet.state_dict()
    assert list(loaded) == list(modern) and all(np.array_equal(loaded[k], modern[k]) for k in modern)
    twin = UNet2DModel.from_pretrained(tmp_path).eval()  # diffusers' reading of the same renamed file
    assert all(np.array_equal(v.numpy(), state[k]) for k, v in twin.state_dict().items())

    convs = {k: v.reshape(*v.shape, 1, 1) if v.ndim == 2 and ".attentions." in k else v for k, v in renamed.items()}
    checkpoint.save(convs, tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = load_diffusers(tmp_path).unet.state_dict()
    assert all(np.array_equal(loaded[k], modern[k]) for k in modern)

    # the hub's earliest pipeline layout: model_index.json with the parts' files beside it, no subfolders
    index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler",
                                                                "variance_type": "fixed_large"}))
    pipe = load_diffusers(tmp_path)
    assert type(pipe.sampler) is DDPMSampler and pipe.sampler.config["variance_type"] == "fixed_large"
    assert all(np.array_equal(pipe.unet.state_dict()[k], modern[k]) for k in modern)


def test_float16_weights_load_upcast(tmp_path):
    """A float16 file (diffusers' fp16 variant) loads as float32 holding exactly the float16 values; the outputs
    are those of diffusers' float32 U-Net with the float16 weights upcast."""
    theirs = diffusers_unet(SMALL, seed=3).half()
    theirs.save_pretrained(tmp_path, variant="fp16")
    raw = (tmp_path / "diffusion_pytorch_model.fp16.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F16"}
    pipe = load_diffusers(tmp_path, variant="fp16")
    upcast = theirs.float()
    assert pipe.unet.conv_in.weight.dtype == np.float32
    assert_same_weights_but_the_time_layer(pipe.unet, upcast)
    x, labels = inputs(SMALL, 2)
    assert_same_function(pipe.unet, upcast, x, [np.array([3, 800])], labels, what="float16 weights")


# --- whole runs against diffusers' pipelines -----------------------------------------------------------------


def pipeline_noise(shape, seed, draws):
    """What diffusers' pipeline draws from torch.Generator().manual_seed(seed): x_T first, then `draws` step noises."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x_T, *noises = (torch.randn(shape, generator=generator).numpy() for _ in range(1 + draws))
    return x_T, noises


def minidiff_run(pipe, x_T, noises, steps):
    """The loaded folder's sampler and U-Net, step by step from x_T, the given noise for every step that adds
    some (t > 1, diffusers' k > 0); the images as the pipelines return them, (B, H, W, C) in [0, 1]."""
    sampler, model = pipe.sampler, pipe.denoiser()
    sampler.set_timesteps(steps)
    x, draws = x_T, iter(noises)
    for t in sampler.timesteps:
        noise = next(draws) if t > 1 and noises else None
        x = sampler.step(model(x, np.full(len(x), t)), t, x, noise=noise).prev_sample
    return np.clip(x / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)


@pytest.mark.parametrize(("kind", "steps"), [("ddim", 20), ("ddpm", 10)])
def test_whole_runs_equal_diffusers_pipelines(kind, steps, tmp_path):
    """[E16][E32] A pipeline folder written by save_pretrained; minidiff's run from its loaded sampler and U-Net
    against the pipeline's own __call__, the same x_T and step noise (a torch Generator's draws)."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    if kind == "ddim":
        scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", steps_offset=1,
                                  set_alpha_to_one=False)
        pipeline, draws = DDIMPipeline(diffusers_unet(UNCONDITIONAL, seed=5), scheduler), 0
    else:
        scheduler = DDPMScheduler(variance_type="fixed_large")
        pipeline, draws = DDPMPipeline(diffusers_unet(UNCONDITIONAL, seed=6), scheduler), steps - 1
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(tmp_path)
    pipe = load_diffusers(tmp_path)
    assert type(pipe.sampler) is {"ddim": DDIMSampler, "ddpm": DDPMSampler}[kind]
    import torch

    shape = (3, UNCONDITIONAL["in_channels"], 8, 8)
    x_T, noises = pipeline_noise(shape, seed=7, draws=draws)
    theirs = pipeline(batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=steps,
                      output_type="np").images
    ours = minidiff_run(pipe, x_T, noises, steps)
    assert np.mean((theirs > 0) & (theirs < 1)) > 0.5, "most pixels must be inside (0, 1), not clamped"
    assert_close(ours, theirs, dtype=np.float32, scale=np.ones(theirs.shape), what=f"{kind}, {steps} steps")


# --- exporting a minidiff U-Net --------------------------------------------------------------------------------


def saved_keys(save) -> set[str]:
    """The keys of the JSON file that save(folder) writes into a new temporary folder."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        (path,) = Path(folder).glob("*.json")
        return set(json.loads(path.read_text()))


def test_a_minidiff_unet_trained_a_few_steps_exports_to_diffusers(tmp_path):
    """A minidiff U-Net (AdaGN, classes, 2 and 4 heads) trained 3 steps on v-prediction with the cosine schedule,
    exported with a DDIMSampler: UNet2DModel.from_pretrained and DDIMPipeline.from_pretrained load the folder as it
    is; diffusers' U-Net at k equals minidiff's at t = k + 1; its scheduler has minidiff's alpha_bar and prediction
    type; both configs have exactly the keys diffusers writes; load_diffusers reads it back."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from minidiff.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    model = UNet(**SMALL, rng=rng)
    start = model.state_dict()
    data = (rng.uniform(-1, 1, (16, 2, 8, 8)).astype(np.float32), rng.integers(0, 3, 16))
    config = TrainConfig(objective="v_prediction", schedule="cosine", steps=3, batch_size=8, lr=1e-2)
    Trainer(model, config, data, tmp_path / "run", show_progress=False).train()
    trained = model.state_dict()
    assert all(not np.array_equal(trained[k], start[k]) for k in trained), "training must move every tensor"

    sampler = DDIMSampler(NoiseSchedule.named("cosine", 1000), prediction_type="v_prediction")
    out = save_diffusers(model, sampler, tmp_path / "export")
    theirs = UNet2DModel.from_pretrained(out / "unet").eval()
    x, labels = inputs(SMALL, 3)
    assert_same_function(model, theirs, x, [np.array([0, 499, 999])], labels, what="exported U-Net")
    pipeline = DDIMPipeline.from_pretrained(out)
    assert type(pipeline.scheduler) is DDIMScheduler and pipeline.scheduler.config.prediction_type == "v_prediction"
    assert_close(pipeline.scheduler.alphas_cumprod.numpy(), sampler.schedule.alpha_bars[1:], dtype=np.float32,
                 what="the exported scheduler's alpha_bar (cosine: squaredcos_cap_v2)")
    assert saved_keys(lambda d: UNet2DModel(**SMALL).save_pretrained(d)) \
        == set(json.loads((out / "unet" / "config.json").read_text()))
    assert saved_keys(DDIMScheduler().save_pretrained) \
        == set(json.loads((out / "scheduler" / "scheduler_config.json").read_text()))

    back = load_diffusers(out)
    assert type(back.sampler) is DDIMSampler and back.sampler.config["prediction_type"] == "v_prediction"
    assert np.array_equal(back.sampler.schedule.betas, sampler.schedule.betas)
    for key, value in back.unet.state_dict().items():  # the time layer rotated there and back: float32 rounding
        assert_close(value, trained[key], scale=np.full(value.shape, np.abs(value).max()), what=key)


# --- refusals -------------------------------------------------------------------------------------------------

UNSUPPORTED_CONFIGS = {
    "a skip block": ({"down_block_types": ["AttnSkipDownBlock2D", "DownBlock2D"]}, "'AttnSkipDownBlock2D'"),
    "an up skip block": ({"up_block_types": ["SkipUpBlock2D", "AttnUpBlock2D"]}, "'SkipUpBlock2D'"),
    "a timestep class embedding": ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
    "an identity class embedding": ({"class_embed_type": "identity"}, "class_embed_type='identity'"),
    "a Fourier time embedding": ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
    "a wider time embedding": ({"time_embedding_dim": 64}, "time_embedding_dim=64"),
    "centering the input": ({"center_input_sample": True}, "center_input_sample=True"),
    "no mid attention": ({"add_attention": False}, "add_attention=False"),
    "no mid block": ({"mid_block_type": None}, "mid_block_type=None"),
    "AdaGroupNorm": ({"resnet_time_scale_shift": "ada_group"}, "resnet_time_scale_shift='ada_group'"),
    "resnet upsampling": ({"upsample_type": "resnet"}, "upsample_type='resnet'"),
    "resnet downsampling": ({"downsample_type": "resnet"}, "downsample_type='resnet'"),
    "GELU": ({"act_fn": "gelu"}, "act_fn='gelu'"),
    "mid attention groups": ({"attn_norm_num_groups": 2}, "attn_norm_num_groups=2"),
    "an unknown key": ({"use_flash": True}, "'use_flash' is not a config key of diffusers' UNet2DModel"),
    "another model": ({"_class_name": "UNet2DConditionModel"}, "'UNet2DConditionModel': minidiff loads UNet2DModel"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED_CONFIGS))
def test_unsupported_config_is_refused_by_name(case, small, tmp_path):
    changes, message = UNSUPPORTED_CONFIGS[case]
    config = json.loads((small[1] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))
    with pytest.raises(ValueError, match=rf"config\.json: .*{message}"):
        load_diffusers(tmp_path)


def test_configs_at_diffusers_defaults_are_accepted(small, tmp_path):
    """Keys left out take diffusers' defaults, explicit defaults and num_train_timesteps (read by the "learned"
    embedding only) change nothing, and diffusers' "UNetRes" block prefix is read as diffusers reads it."""
    theirs, folder = small
    config = json.loads((folder / "config.json").read_text())
    for key in ("act_fn", "add_attention", "center_input_sample", "mid_block_type", "upsample_type"):
        del config[key]
    config.update(num_train_timesteps=1000, time_embedding_dim=4 * 8, attn_norm_num_groups=None,
                  down_block_types=["UNetResAttnDownBlock2D", "DownBlock2D"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", tmp_path)
    x, labels = inputs(SMALL, 2)
    assert_same_function(load_diffusers(tmp_path).unet, theirs, x, [np.array([5, 50])], labels)


def bad_weights(folder, tmp_path, edit):
    """A copy of the folder whose weights are edit(state dict)."""
    tmp_path.mkdir()
    shutil.copy(folder / "config.json", tmp_path)
    state = checkpoint.load(folder / "diffusion_pytorch_model.safetensors")
    checkpoint.save(edit(state), tmp_path / "diffusion_pytorch_model.safetensors")
    return tmp_path


def test_weights_that_do_not_fit_are_refused_naming_file_and_keys(small, tmp_path):
    folder = small[1]
    file = r"diffusion_pytorch_model\.safetensors: "

    def drop(state):
        return {k: v for k, v in state.items() if k != "conv_out.bias"}

    with pytest.raises(ValueError, match=file + "does not fit .*missing 1 weights: conv_out.bias"):
        load_diffusers(bad_weights(folder, tmp_path / "missing", drop))
    with pytest.raises(ValueError, match=file + ".*1 weights the UNet has no place for: extra.weight"):
        load_diffusers(bad_weights(folder, tmp_path / "extra", lambda s: {**s, "extra.weight": np.zeros(2)}))
    with pytest.raises(ValueError, match=file + r".*shape mismatch: conv_in.weight is \(8, 2, 3, 1\) .*\(8, 2, 3, 3\)"):
        load_diffusers(bad_weights(folder, tmp_path / "shape",
                                   lambda s: {**s, "conv_in.weight": s["conv_in.weight"][..., :1]}))
    with pytest.raises(ValueError, match=file + "holds both .*attentions.0.query.weight and .*attentions.0.to_q"):
        load_diffusers(bad_weights(folder, tmp_path / "both", lambda s: {
            **s, "mid_block.attentions.0.query.weight": s["mid_block.attentions.0.to_q.weight"]}))
    raw = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    truncated = bad_weights(folder, tmp_path / "cut", lambda s: s)
    (truncated / "diffusion_pytorch_model.safetensors").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match=file + r"not a valid safetensors file: .*\(truncated\?\)"):
        load_diffusers(truncated)


def test_missing_and_foreign_files_are_refused_by_name(small, tmp_path):
    folder = small[1]
    with pytest.raises(FileNotFoundError, match=r"holds neither model_index\.json .* nor config\.json"):
        load_diffusers(tmp_path)
    shutil.copy(folder / "config.json", tmp_path)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"safetensors: no such file; diffusion_pytorch_model\.bin is a "
                                                "PyTorch pickle, which minidiff does not read"):
        load_diffusers(tmp_path)
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "PNDMScheduler"}))
    with pytest.raises(ValueError, match=r"scheduler_config\.json: _class_name: minidiff implements .*'PNDMScheduler'"):
        load_diffusers(tmp_path)
    index = {"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "DDIMScheduler"], "vqvae": ["diffusers", "VQModel"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"LDMPipeline also has vqvae \(VQModel\); minidiff loads pipelines of a "
                                         "UNet2DModel and a scheduler only"):
        load_diffusers(tmp_path)


def test_export_refuses_what_diffusers_cannot_run_and_never_leaves_half_a_folder(tmp_path, monkeypatch):
    unet = UNet(**UNCONDITIONAL, rng=np.random.default_rng(0))
    ddpm = DDPMSampler()
    with pytest.raises(TypeError, match="model: diffusers' UNet2DModel cannot express a MLPDenoiser"):
        save_diffusers(MLPDenoiser(rng=np.random.default_rng(0)), ddpm, tmp_path / "mlp")
    with pytest.raises(ValueError, match="cross_attention_dim=3: diffusers' UNet2DModel has no cross-attention"):
        save_diffusers(UNet(**UNCONDITIONAL, cross_attention_dim=3), ddpm, tmp_path / "cross")
    with pytest.raises(ValueError, match="sampler: no diffusers pipeline for unconditional images runs a "
                                         "EulerSampler as minidiff does"):
        save_diffusers(unet, EulerSampler(), tmp_path / "euler")
    assert list(tmp_path.iterdir()) == []

    first = save_diffusers(unet, ddpm, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="model exists and is not empty; pass overwrite=True"):
        save_diffusers(unet, DDIMSampler(), first)

    def disk_full(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_diffusers(unet, DDIMSampler(), first, overwrite=True)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no temporary folder may stay behind"
    assert {p.name: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before, "the old folder, intact"
    save_diffusers(unet, DDIMSampler(), first, overwrite=True)
    assert type(load_diffusers(first).sampler) is DDIMSampler and [p.name for p in tmp_path.iterdir()] == ["model"]
    bare = save_diffusers(unet, None, tmp_path / "bare")
    assert sorted(p.name for p in bare.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
