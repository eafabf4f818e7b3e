"""python -m minidiff: info tells a helper what they need; exercises keeps the stubs in sync; train, sample and
eval round trip on a 2-D toy and on digits; every bad input ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minidiff as md
from minidiff import cli
from minidiff.train import load_checkpoint


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minidiff", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)


def test_info_names_versions_backends_build_and_cpu():
    result = run("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("minidiff", md.__version__, "numpy", "backends:", "cuda-emu", "current", "cpu:", "features"):
        assert needle in out
    for name in md.available_backends():
        assert f"{name} " in out
    ext = md.backend._extension()[0]
    if ext is not None:
        info = ext.build_info()
        assert info["compiler"] in out
        assert ("-march=native" in out) and (str(info["march_native"]) in out)


def test_info_says_for_every_backend_whether_it_runs_and_why_not():
    result = run("info", MINIDIFF_BACKEND="numpy")
    for name in md.backend.BACKENDS + md.backend.TEST_BACKENDS:
        why = md.backend.why_unavailable(name)
        assert f"{name}  " in result.stdout
        assert (f"unavailable: {why}" if why else "available") in result.stdout


def test_exercises_check_reports_up_to_date_stubs():
    result = run("exercises", "--check")
    assert result.returncode == 0, result.stdout
    assert "up to date" in result.stdout


# --- train, sample, eval --------------------------------------------------------------------------------------


def call(*args: str) -> subprocess.CompletedProcess:
    """main(args) in this process (quicker than a subprocess), as a CompletedProcess; an uncaught exception
    fails the test as a traceback would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str, code: int = 1) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", ["demo", "train", "sample", "eval"])
def test_every_command_has_help(command):
    result = call(command, "--help")
    assert result.returncode == 0 and "usage: python -m minidiff " + command in result.stdout
    assert "--out" in result.stdout


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "moons"
    result = call("train", "--dataset", "moons", "--steps", "30", "--batch-size", "64", "--out", str(out),
                 "--checkpoint-every", "20")
    assert result.returncode == 0, result.stderr
    return out


def test_train_writes_a_checkpoint_and_resume_continues_to_the_new_total(moons_run, tmp_path):
    assert load_checkpoint(moons_run).meta["step"] == 30
    resumed = tmp_path / "moons"
    resumed.mkdir()
    for f in moons_run.iterdir():
        (resumed / f.name).write_bytes(f.read_bytes())
    result = call("train", "--resume", "--steps", "40", "--out", str(resumed))
    assert result.returncode == 0, result.stderr
    assert "steps 30..40" in result.stdout
    assert load_checkpoint(resumed).meta["step"] == 40
    steps = [int(line.split(",")[0]) for line in (resumed / "log.csv").read_text().splitlines()[1:]]
    assert steps == [10, 20, 30, 40]


def test_sample_writes_npy_and_scatter_and_eval_reports_sliced_wasserstein(moons_run, tmp_path):
    result = call("sample", "--checkpoint", str(moons_run), "--sampler", "ddim", "--steps", "5", "--n", "64",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (64, 2) and samples.dtype == np.float32 and np.isfinite(samples).all()
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    call("sample", "--checkpoint", str(moons_run), "--sampler", "ddim", "--steps", "5", "--n", "64",
        "--out", str(tmp_path / "again"))
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "samples.npy"), samples)  # the seed fixes the draw
    result = call("eval", "--checkpoint", str(moons_run), "--sampler", "dpm", "--steps", "5", "--n", "64",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "metrics.json").read_text())
    sw = report["sliced_wasserstein"]
    assert sw["ratio"] == pytest.approx(sw["samples"] / sw["real"]) and report["num_points"] == 64


def test_image_round_trip_with_gif_and_bits_per_dim(tmp_path):
    out = tmp_path / "digits"
    result = call("train", "--dataset", "digits", "--steps", "2", "--timesteps", "20", "--batch-size", "16",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    result = call("sample", "--checkpoint", str(out), "--steps", "3", "--n", "4", "--gif", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "samples.npy").shape == (4, 1, 8, 8)
    assert (tmp_path / "reverse_process.gif").read_bytes()[:6] == b"GIF89a"
    result = call("eval", "--checkpoint", str(out), "--steps", "3", "--n", "8", "--bpd-examples", "4",
                 "--classifier-steps", "5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bits_per_dim"]["num_examples"] == 4 and np.isfinite(report["bits_per_dim"]["value"])
    assert report["bits_per_dim"]["decoder"] == "gaussian"  # the digits' 17 grey levels are not 8-bit
    assert report["num_images"]["samples"] == 8 and len(report["class_histogram"]["samples"]) == 10


def test_ctrl_c_during_training_saves_a_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "minidiff", "train", "--dataset", "moons", "--minutes", "2",
                                "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "log.csv").is_file() or len((out / "log.csv").read_text().splitlines()) < 2:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted at step" in stderr and "Traceback" not in stderr
    assert load_checkpoint(out).meta["step"] >= 10


# --- bad input: one line, non-zero exit, no traceback -----------------------------------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (("train", "--dataset", "mnist", "--steps", "1", "--out", "x"), "invalid choice: 'mnist'"),
    (("train", "--dataset", "moons", "--out", "x"), "--steps N or --minutes M"),
    (("train", "--dataset", "moons", "--steps", "-3", "--out", "x"), "expected a positive int"),
    (("train", "--dataset", "moons", "--steps", "1", "--minutes", "1", "--out", "x"), "not allowed with"),
    (("sample", "--checkpoint", "x", "--n", "0", "--out", "y"), "expected a positive int"),
    (("demo", "--minutes", "nan"), "expected a positive float"),
    (("sample", "--out", "y"), "--checkpoint"),
])
def test_bad_arguments_are_one_line_with_exit_code_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(call(*args), needle, code=2)


def test_a_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_FASHION_MNIST", str(tmp_path / "nowhere"))
    result = call("train", "--dataset", "fashion_mnist", "--steps", "1", "--out", str(tmp_path / "f"))
    assert_one_line_error(result, "error:", "fashion")


def test_model_that_does_not_fit_the_dataset(tmp_path):
    result = call("train", "--dataset", "moons", "--model", "unet", "--steps", "1", "--out", str(tmp_path / "m"))
    assert_one_line_error(result, "--model", "needs --model mlp")


def test_an_unwritable_folder(tmp_path):
    (tmp_path / "file").write_text("")
    result = call("train", "--dataset", "moons", "--steps", "1", "--out", str(tmp_path / "file" / "run"))
    assert_one_line_error(result, "--out: cannot write into")
    result = call("demo", "--steps", "1", "--out", str(tmp_path / "file" / "demo"))
    assert_one_line_error(result, "--out: cannot write into")


def test_missing_corrupt_and_foreign_checkpoints(moons_run, tmp_path):
    result = call("sample", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path))
    assert_one_line_error(result, "checkpoint not found")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in moons_run.iterdir():
        data = f.read_bytes()
        (corrupt / f.name).write_bytes(data[:len(data) // 2] if f.suffix == ".safetensors" else data)
    assert_one_line_error(call("eval", "--checkpoint", str(corrupt)), "SHA-256 does not match")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for f in moons_run.iterdir():
        (foreign / f.name).write_bytes(f.read_bytes())
    meta = json.loads((foreign / "checkpoint.json").read_text())
    meta["model"]["config"]["hidden"] = 64  # another model's config: the weights do not fit it
    (foreign / "checkpoint.json").write_text(json.dumps(meta))
    assert_one_line_error(call("sample", "--checkpoint", str(foreign), "--out", str(tmp_path)), "--checkpoint")
    (foreign / "checkpoint.json").write_text("{not json")
    assert_one_line_error(call("train", "--resume", "--out", str(foreign)), "not a valid checkpoint")


def test_flow_models_sample_with_flow_samplers_only(tmp_path):
    out = tmp_path / "flow"
    assert call("train", "--dataset", "moons", "--objective", "flow", "--steps", "2", "--out", str(out)).returncode == 0
    assert_one_line_error(call("sample", "--checkpoint", str(out), "--sampler", "ddim", "--out", str(tmp_path)),
                          "--sampler: a flow-matching model samples with euler or heun")
    result = call("sample", "--checkpoint", str(out), "--sampler", "heun", "--steps", "3", "--n", "16",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr


# --- class-conditional models: train --conditional, sample --label --guidance, edit -----------------------------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits-conditional"
    result = call("train", "--dataset", "digits", "--conditional", "--steps", "3", "--timesteps", "20",
                  "--batch-size", "16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_train_defaults_by_dataset_and_conditional_training(conditional_run, tmp_path):
    """Images get the demo's settings (v-prediction, min-SNR 5, cosine, the (16, 32) U-Net); --conditional adds a
    class table with a null label (10 digits + 1) and drops labels with probability 0.1; points get the 2-D
    benchmark's (epsilon, linear, batch 512); both ramp the EMA decay up."""
    ckpt = load_checkpoint(conditional_run)
    config, model = ckpt.config, ckpt.meta["model"]["config"]
    assert (config.objective, config.schedule, config.min_snr_gamma, config.ema_warmup) == \
        ("v_prediction", "cosine", 5.0, True)
    assert (config.label_dropout, config.null_label) == (0.1, 10)
    assert model["num_class_embeds"] == 11 and tuple(model["block_out_channels"]) == (16, 32)
    assert ckpt.meta["data"]["labels"] is True
    out = tmp_path / "moons"
    assert call("train", "--dataset", "moons", "--steps", "1", "--out", str(out)).returncode == 0
    config = load_checkpoint(out).config
    assert (config.objective, config.schedule, config.batch_size, config.min_snr_gamma, config.ema_warmup) == \
        ("epsilon", "linear", 512, None, True)


def conditional_unet(run):
    from minidiff.train import build_model

    ckpt = load_checkpoint(run)
    model = build_model(ckpt)
    model.load_state_dict(ckpt.model_state_dict(ema=True))
    return model.eval()


def test_sample_with_guidance_one_is_the_conditional_model_and_zero_the_unconditional(conditional_run, tmp_path):
    """[E41] sample --label 3 --guidance 1 draws what the U-Net called with label 3 draws, and --guidance 0 what
    it draws with the null label, from the same seed (computed here by calling the network directly)."""
    from minidiff.diffusion.schedules import NoiseSchedule
    from minidiff.samplers import DPMSolverMultistepSampler

    model = conditional_unet(conditional_run)
    sampler = DPMSolverMultistepSampler(NoiseSchedule.named("cosine", 20), prediction_type="v_prediction")
    for scale, label in (("1", 3), ("0", 10)):
        out = tmp_path / scale
        result = call("sample", "--checkpoint", str(conditional_run), "--label", "3", "--guidance", scale,
                      "--steps", "4", "--n", "6", "--out", str(out))
        assert result.returncode == 0, result.stderr

        def network(x, t, label=label):
            with md.no_grad():
                return model(md.Tensor(x), t, np.full(len(x), label)).data

        expected = sampler.sample(network, (6, 1, 8, 8), np.random.default_rng(0), num_inference_steps=4,
                                  progress=False)
        np.testing.assert_allclose(np.load(out / "samples.npy"), np.clip(expected, -1, 1), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.load(out / "labels.npy"), np.full(6, 3))


def test_sample_and_eval_without_a_label_take_the_classes_in_turn(conditional_run, tmp_path):
    result = call("sample", "--checkpoint", str(conditional_run), "--steps", "2", "--n", "12", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), np.arange(12) % 10)
    result = call("eval", "--checkpoint", str(conditional_run), "--steps", "2", "--n", "20", "--bpd-examples", "2",
                  "--classifier-steps", "5", "--label", "4")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["guidance"]
    assert report["scale"] == cli.DEFAULT_GUIDANCE and 0.0 <= report["fraction_classified_as_requested"] <= 1.0


def test_edit_sdedit_from_zero_is_the_input_and_inpainting_keeps_the_known_pixels(conditional_run, tmp_path):
    """[E49] --t0 0 returns the input; [E50] inpainting returns the input exactly where the mask is 1; [E33]
    invert writes the latent and its decoding."""
    x = md.data.digits("test")[0][:3]  # (3, 1, 8, 8)
    np.save(tmp_path / "x.npy", x)
    mask = np.zeros((8, 8))
    mask[:, :4] = 1  # the left half is known
    np.save(tmp_path / "mask.npy", mask)
    result = call("edit", "--checkpoint", str(conditional_run), "--mode", "sdedit", "--t0", "0", "--input",
                  str(tmp_path / "x.npy"), "--out", str(tmp_path / "sdedit"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "sdedit" / "edited.npy"), x)
    result = call("edit", "--checkpoint", str(conditional_run), "--mode", "inpaint", "--input", str(tmp_path / "x.npy"),
                  "--mask", str(tmp_path / "mask.npy"), "--steps", "5", "--resample", "2", "--label", "1",
                  "--out", str(tmp_path / "inpaint"))
    assert result.returncode == 0, result.stderr
    edited = np.load(tmp_path / "inpaint" / "edited.npy")
    np.testing.assert_array_equal(edited[..., :4], x[..., :4])
    assert not np.allclose(edited[..., 4:], x[..., 4:])
    result = call("edit", "--checkpoint", str(conditional_run), "--mode", "invert", "--input", str(tmp_path / "x.npy"),
                  "--steps", "4", "--out", str(tmp_path / "invert"))
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "invert" / "latent.npy").shape == x.shape
    assert (tmp_path / "invert" / "edited.png").read_bytes()[:4] == b"\x89PNG"


def test_guidance_and_edit_bad_input(conditional_run, moons_run, tmp_path):
    plain = tmp_path / "plain"
    result = call("train", "--dataset", "digits", "--steps", "1", "--timesteps", "20", "--out", str(plain))
    assert result.returncode == 0, result.stderr
    x = tmp_path / "x.npy"
    np.save(x, md.data.digits("test")[0][:2])
    args = ("--steps", "2", "--n", "2", "--out", str(tmp_path / "s"))
    assert_one_line_error(call("sample", "--checkpoint", str(plain), "--label", "3", *args),
                          "--label: this checkpoint's model is not class-conditional")
    assert_one_line_error(call("sample", "--checkpoint", str(plain), "--guidance", "2", *args), "--guidance")
    assert_one_line_error(call("sample", "--checkpoint", str(conditional_run), "--label", "10", *args),
                          "--label: expected a class in 0..9")
    assert_one_line_error(call("sample", "--checkpoint", str(conditional_run), "--guidance", "-1", *args),
                          "expected a non-negative float", code=2)
    assert_one_line_error(call("train", "--dataset", "moons", "--conditional", "--steps", "1", "--out",
                               str(tmp_path / "m")), "--conditional")
    edit = ("edit", "--checkpoint", str(conditional_run), "--input", str(x), "--out", str(tmp_path / "e"))
    assert_one_line_error(call(*edit, "--mode", "inpaint"), "--mask: required")
    assert_one_line_error(call(*edit, "--mode", "sdedit", "--t0", "1.5"), "--t0: expected")
    assert_one_line_error(call(*edit, "--mode", "invert", "--mask", str(x)), "--mask: only for --mode inpaint")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 1, 7, 8)))
    assert_one_line_error(call(*edit[:4], str(wrong), *edit[5:], "--mode", "sdedit"), "--input: expected an image")
    np.save(wrong, np.full((8, 8), 0.5))
    assert_one_line_error(call(*edit, "--mode", "inpaint", "--mask", str(wrong)), "--mask: expected a mask of 0")
    assert_one_line_error(call(*edit[:4], str(tmp_path / "none.png"), *edit[5:], "--mode", "sdedit"),
                          "--input: no such file")
    assert_one_line_error(call("edit", "--checkpoint", str(moons_run), "--mode", "sdedit", "--input", str(x),
                               "--out", str(tmp_path / "e")), "edit works on image models")
