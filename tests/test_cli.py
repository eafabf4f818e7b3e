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
