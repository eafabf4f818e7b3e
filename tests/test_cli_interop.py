"""python -m minidiff export and sample --diffusers: a checkpoint exported as a diffusers folder loads in diffusers'
pipeline with the same U-Net, samples from the folder equal samples from the checkpoint, and every bad input ends
in one line on stderr with a non-zero exit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, call
from tolerances import DIFFUSERS_MODEL, assert_close

import minidiff as md
from minidiff.autodiff import Tensor
from minidiff.interop import save_diffusers
from minidiff.nn.unet import UNet
from minidiff.samplers import DDPMSampler
from minidiff.train import build_model, load_checkpoint


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A U-Net trained 2 steps on the digits (the CLI's image defaults: v-prediction, cosine schedule), T = 20."""
    out = tmp_path_factory.mktemp("cli_interop") / "digits"
    result = call("train", "--dataset", "digits", "--steps", "2", "--timesteps", "20", "--batch-size", "16",
                  "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def ema_model(run):
    ckpt = load_checkpoint(run)
    model = build_model(ckpt)
    model.load_state_dict(ckpt.model_state_dict(ema=True))
    return model.eval()


@pytest.mark.torch
def test_export_writes_a_folder_diffusers_runs_with_the_checkpoints_unet(digits_run, tmp_path):
    """The DDIMPipeline loads the folder as it is: its U-Net at k is the checkpoint's EMA U-Net at t = k + 1, its
    scheduler has the checkpoint's prediction type and T."""
    import torch
    from diffusers import DDIMPipeline

    out = tmp_path / "exported"
    result = call("export", "--checkpoint", str(digits_run), "--sampler", "ddim", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote a diffusers DDIMPipeline folder (the EMA U-Net, a DDIMScheduler) into {out}" in result.stdout
    pipeline = DDIMPipeline.from_pretrained(out)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert pipeline.scheduler.config.num_train_timesteps == 20
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    k = np.array([0, 19])
    with torch.no_grad():
        theirs = pipeline.unet(torch.from_numpy(x), torch.from_numpy(k)).sample.numpy()
    with md.no_grad():
        ours = ema_model(digits_run)(Tensor(x), k + 1).data
    assert_close(ours, theirs, scale=np.full(theirs.shape, np.abs(theirs).max()), tol=DIFFUSERS_MODEL)


def test_sample_from_the_exported_folder_equals_sampling_the_checkpoint(digits_run, tmp_path):
    """sample --diffusers on the exported folder: the folder's own DDIM sampler, the same U-Net (its time layer
    rotated out and back: float32 rounding), the same seed: the checkpoint's samples, files alike."""
    folder = tmp_path / "exported"
    assert call("export", "--checkpoint", str(digits_run), "--sampler", "ddim", "--out", str(folder)).returncode == 0
    args = ("--sampler", "ddim", "--steps", "3", "--n", "4", "--seed", "5")
    result = call("sample", "--diffusers", str(folder), *args, "--gif", "--out", str(tmp_path / "from_folder"))
    assert result.returncode == 0, result.stderr
    assert "wrote samples.npy, samples.png, reverse_process.gif (4 samples)" in result.stdout
    assert call("sample", "--checkpoint", str(digits_run), *args, "--out", str(tmp_path / "from_ckpt")).returncode == 0
    ours, reference = (np.load(tmp_path / name / "samples.npy") for name in ("from_folder", "from_ckpt"))
    assert ours.shape == (4, 1, 8, 8) and ours.dtype == np.float32
    assert_close(ours, reference, scale=np.ones(ours.shape), what="samples of the folder vs the checkpoint")
    assert (tmp_path / "from_folder" / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_export_and_diffusers_arguments_are_one_line_errors(digits_run, tmp_path):
    result = call("sample", "--sampler", "ddim", "--out", str(tmp_path / "s"))
    assert_one_line_error(result, "one of the arguments --checkpoint --diffusers is required", code=2)
    result = call("sample", "--checkpoint", str(digits_run), "--diffusers", str(tmp_path), "--out", str(tmp_path))
    assert_one_line_error(result, "argument --diffusers: not allowed with argument --checkpoint", code=2)
    assert_one_line_error(call("sample", "--diffusers", str(tmp_path / "absent"), "--out", str(tmp_path / "s")),
                          "holds neither model_index.json", "nor config.json")

    folder = tmp_path / "exported"
    assert call("export", "--checkpoint", str(digits_run), "--out", str(folder)).returncode == 0
    assert_one_line_error(call("export", "--checkpoint", str(digits_run), "--out", str(folder)),
                          "exists and is not empty; pass overwrite=True")
    assert call("export", "--checkpoint", str(digits_run), "--out", str(folder), "--overwrite").returncode == 0
    assert_one_line_error(call("sample", "--diffusers", str(folder), "--label", "3", "--out", str(tmp_path / "s")),
                          "--label: this checkpoint's model is not class-conditional")
    assert_one_line_error(call("export", "--checkpoint", str(digits_run), "--sampler", "euler", "--out",
                               str(tmp_path / "e")), "invalid choice: 'euler'", code=2)

    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "num_class_embeds": 4}))
    assert_one_line_error(call("sample", "--diffusers", str(folder), "--out", str(tmp_path / "s")),
                          "diffusion_pytorch_model.safetensors: does not fit the UNet its config.json describes: "
                          "missing 1 weights: class_embedding.weight")
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    conditional = UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,), layers_per_block=1,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=4,
                       num_class_embeds=4, rng=np.random.default_rng(0))
    save_diffusers(conditional, DDPMSampler(), tmp_path / "conditional")
    assert_one_line_error(call("sample", "--diffusers", str(tmp_path / "conditional"), "--out", str(tmp_path / "s")),
                          "U-Net is class-conditional (num_class_embeds = 4)")
    (folder / "unet" / "config.json").rename(folder / "config.json")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.safetensors")
    (folder / "model_index.json").unlink()
    assert_one_line_error(call("sample", "--diffusers", str(folder), "--out", str(tmp_path / "s")),
                          "has no scheduler config (a bare UNet2DModel folder)")


def test_models_diffusers_cannot_run_are_refused_in_one_line(tmp_path):
    moons = tmp_path / "moons"
    result = call("train", "--dataset", "moons", "--steps", "2", "--batch-size", "64", "--out", str(moons))
    assert result.returncode == 0, result.stderr
    assert_one_line_error(call("export", "--checkpoint", str(moons), "--out", str(tmp_path / "m")),
                          "model: diffusers' UNet2DModel cannot express a MLPDenoiser")
    flow = tmp_path / "flow"
    assert call("train", "--dataset", "digits", "--objective", "flow", "--steps", "1", "--batch-size", "8",
                "--out", str(flow)).returncode == 0
    assert_one_line_error(call("export", "--checkpoint", str(flow), "--out", str(tmp_path / "f")),
                          "a flow-matching model has no diffusers pipeline")
