"""`python -m minidiff COMMAND`: info, exercises, student-copy, equations, book, demo (the main job), train, sample,
eval, edit, export.

    python -m minidiff demo                                   # ~5 minutes: train on digits, sample, judge
    python -m minidiff train --dataset moons --steps 2000 --out runs/moons
    python -m minidiff sample --checkpoint runs/moons --sampler ddim --steps 50 --n 2000 --out runs/moons/samples
    python -m minidiff eval --checkpoint runs/moons
    python -m minidiff train --dataset digits --conditional --minutes 5 --out runs/digits
    python -m minidiff sample --checkpoint runs/digits --label 3 --guidance 3 --n 100 --out runs/digits/threes
    python -m minidiff edit --checkpoint runs/digits --mode inpaint --input x.npy --mask m.npy --out runs/edit
    python -m minidiff export --checkpoint runs/digits --sampler ddim --out runs/digits-diffusers
    python -m minidiff sample --diffusers ddpm-cifar10 --sampler ddim --steps 50 --n 16 --out runs/cifar10
    python -m minidiff book --fast --out book                 # the chapters as a website: book/index.html

Errors of the user's making (bad arguments, a missing dataset, an unwritable folder, a checkpoint that does
not fit) end with one line on stderr and exit code 1 (argparse's own errors: 2); Ctrl-C during training
saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_DATASETS = ("digits", "fashion_mnist")
TOY_DATASETS = ("moons", "swiss_roll", "eight_gaussians", "checkerboard", "spirals")
MODELS = ("unet", "mlp")
OBJECTIVES = ("epsilon", "sample", "v_prediction", "flow")
SAMPLERS = ("ddpm", "ddim", "dpm", "euler", "heun")
EXPORT_SAMPLERS = ("ddpm", "ddim", "dpm")  # those a diffusers pipeline runs as minidiff does
# The diffusers scheduler of each --sampler: `sample --diffusers` builds it on a folder's noise schedule.
DIFFUSERS_SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler",
                        "euler": "EulerDiscreteScheduler", "heun": "HeunDiscreteScheduler"}
TOY_POINTS = 100_000  # the size of a 2-D training set (as in benchmarks/bench_toy2d.py)
# Training defaults by kind of data (the flags override them): the tuned settings of the 2-D benchmark
# (benchmarks/bench_toy2d.py) and of the digits demo (minidiff.demo.DemoConfig), with the EMA's decay ramped up
# (TrainConfig.ema_warmup) so that a run of any length samples from an average of its recent weights.
TRAIN_DEFAULTS = {"points": {"objective": "epsilon", "schedule": "linear", "min_snr_gamma": None,
                             "batch_size": 512, "lr": 2e-3, "warmup_steps": 100, "ema_decay": 0.999},
                  "images": {"objective": "v_prediction", "schedule": "cosine", "min_snr_gamma": 5.0,
                             "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "ema_decay": 0.99}}
# The U-Net's channels per level by dataset (the digits': the demo's).
UNET_CHANNELS = {"digits": (16, 32), "fashion_mnist": (32, 64)}
EXIT_INTERRUPTED = 130
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale w of `sample`, `eval` and `edit` for class-conditional models


class CLIError(Exception):
    """A problem to report in one line on stderr (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, reporting a bad argument in one line (not the usage block) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- info and exercises -----------------------------------------------------------------------------------


def _info(_: argparse.Namespace) -> int:
    from minidiff.info import report

    print(report())
    return 0


def _exercises(args: argparse.Namespace) -> int:
    from minidiff import exercise_tools

    if args.check:
        stale = exercise_tools.stale_files()
        if stale:
            print("stale exercise stubs (run `python -m minidiff exercises`): " + ", ".join(stale))
            return 1
        print("exercise stubs are up to date")
        return 0
    messages = exercise_tools.write_stubs(force=args.force)
    print("\n".join(messages) or "exercise stubs are up to date")
    return 0


def _student_copy(args: argparse.Namespace) -> int:
    from minidiff import student_copy

    count, ids = student_copy.write(args.dir, untracked=args.untracked)
    print(f"wrote {args.dir}: {count} files, the solutions of {len(ids)} exercises replaced by their stubs' raise "
          "(grade what students hand back with `pytest --student --exercises-from PATH` in this repository)")
    return 0


def _equations(args: argparse.Namespace) -> int:
    from minidiff import equations

    if args.check:
        stale = equations.page_is_stale()
        print(f"{equations.PAGE} is {'stale (run `python -m minidiff equations --write`)' if stale else 'up to date'}")
        return int(stale)
    if args.write:
        print(f"wrote {equations.write_page().relative_to(equations.ROOT)}")
        return 0
    print(equations.render_text(args.ids), end="")
    return 0


def _book(args: argparse.Namespace) -> int:
    from minidiff import book

    chapters = args.chapters.split(",") if args.chapters is not None else None
    try:
        index = book.build(args.out, fast=args.fast, chapters=chapters, folder=Path(args.notebooks or book.NOTEBOOKS),
                           timeout=args.timeout, log=print)
    except book.BookError as e:
        raise CLIError(str(e)) from None
    print(f"wrote the book to {index.parent}; open {index}")
    return 0


# --- shared helpers ---------------------------------------------------------------------------------------


def _writable_folder(path: str) -> Path:
    """Create the folder `path` (and its parents) and check that files can be created in it."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".minidiff-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise CLIError(f"--out: cannot write into {folder}: {e.strerror or e}") from None
    return folder


def _dataset(name: str, seed: int, labels: bool = False) -> tuple[np.ndarray, ...]:
    """The training data of a dataset by name: images (N, 1, H, W) for digits and Fashion-MNIST (with their
    labels (N,) when `labels`), points (TOY_POINTS, 2) float32 drawn with `seed` for a 2-D toy (the same seed
    gives the same set)."""
    from minidiff import data

    if name in IMAGE_DATASETS:
        images, classes = getattr(data, name)("train")
        return (images, classes) if labels else (images,)
    if labels:
        raise CLIError(f"--conditional: class-conditional training needs a labelled image dataset "
                       f"({', '.join(IMAGE_DATASETS)}), got {name}")
    sampler = getattr(data, name)
    return (sampler(TOY_POINTS, np.random.default_rng(seed), dtype=np.float32),)


def _build_model(kind: str, dataset: str, x: np.ndarray, seed: int, num_classes: int | None = None) -> Any:
    """The network for `dataset`: an MLPDenoiser for 2-D points, for images the demo's small U-Net (class-
    conditional with num_classes + 1 class embeddings, the last one the null label, when num_classes is set)."""
    from minidiff.nn.mlp import MLPDenoiser
    from minidiff.nn.unet import UNet

    image = dataset in IMAGE_DATASETS
    if image != (kind == "unet"):
        wanted = "unet" if image else "mlp"
        what = "images" if image else "2-D points"
        raise CLIError(f"--model: the {dataset} dataset ({what}) needs --model {wanted}, got {kind}")
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        return MLPDenoiser(dim=x.shape[1], hidden=128, layers=3, rng=rng)
    channels = UNET_CHANNELS[dataset]
    return UNet(sample_size=x.shape[-1], in_channels=x.shape[1], out_channels=x.shape[1], block_out_channels=channels,
                layers_per_block=1, down_block_types=("DownBlock2D",) * len(channels),
                up_block_types=("UpBlock2D",) * len(channels), attention_head_dim=None, norm_num_groups=8,
                num_class_embeds=None if num_classes is None else num_classes + 1, rng=rng)


def _load(path: str) -> tuple[Any, Any, str]:
    """(checkpoint, model with the EMA weights in eval mode, dataset name) of a training output folder."""
    from minidiff.train import build_model, load_checkpoint

    ckpt = load_checkpoint(path)
    model = build_model(ckpt)
    try:
        model.load_state_dict(ckpt.model_state_dict(ema=True))
    except (TypeError, ValueError, KeyError) as e:
        raise CLIError(f"--checkpoint: {ckpt.path}: its weights do not fit its model ({e})") from None
    dataset = (ckpt.meta["data"].get("description") or {}).get("dataset")
    if dataset not in IMAGE_DATASETS + TOY_DATASETS:
        raise CLIError(f"--checkpoint: {ckpt.path} was not trained by `python -m minidiff train` or `demo` "
                       "(its data description names no known dataset)")
    return ckpt, model, dataset


def _sampler(name: str, ckpt: Any, dataset: str) -> Any:
    from minidiff import samplers
    from minidiff.diffusion.schedules import NoiseSchedule

    config = ckpt.config
    if config.objective == "flow":
        flow = {"euler": samplers.FlowMatchEulerSampler, "heun": samplers.FlowMatchHeunSampler}
        if name not in flow:
            raise CLIError(f"--sampler: a flow-matching model samples with euler or heun, got {name}")
        return flow[name]()
    schedule = NoiseSchedule.named(config.schedule, config.num_train_timesteps)
    kinds = {"ddpm": samplers.DDPMSampler, "ddim": samplers.DDIMSampler, "dpm": samplers.DPMSolverMultistepSampler,
             "euler": samplers.EulerSampler, "heun": samplers.HeunSampler}
    options: dict[str, Any] = {"prediction_type": config.objective}
    if name in ("ddpm", "ddim") and dataset in TOY_DATASETS:
        options["clip_sample"] = False  # 2-D points are not confined to [-1, 1]
    return kinds[name](schedule, **options)


def _network(model: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from minidiff.demo import network_fn

    return network_fn(model)


def _is_conditional(model: Any) -> bool:
    return getattr(model, "class_embedding", None) is not None


def _model_function(args: argparse.Namespace, model: Any, n: int) -> tuple[Callable[..., np.ndarray], Any]:
    """(the model function a sampler calls, the label of each of the n samples or None). A class-conditional
    model is guided (classifier-free, E41; with --negative-label, E42) toward --label, or toward the classes
    in turn (0, 1, ..., 9, 0, ...) when no label is given."""
    flags = {"--label": args.label, "--guidance": args.guidance, "--negative-label": args.negative_label}
    if not _is_conditional(model):
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise CLIError(f"{given[0]}: this checkpoint's model is not class-conditional (train one with "
                           "`python -m minidiff train --conditional`)")
        return _network(model), None
    from minidiff import guidance

    classes = model.null_class_label  # labels 0..classes-1; the null label is `classes`
    for flag in ("--label", "--negative-label"):
        if flags[flag] is not None and not 0 <= flags[flag] < classes:
            raise CLIError(f"{flag}: expected a class in 0..{classes - 1}, got {flags[flag]}")
    labels = np.full(n, args.label) if args.label is not None else np.arange(n) % classes  # (n,)
    scale = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    guided = guidance.classifier_free(guidance.conditional(model), labels, scale, negative=args.negative_label)
    return guided, labels


def _draw(args: argparse.Namespace, ckpt: Any, model: Any, dataset: str,
          trajectory: bool = False) -> tuple[np.ndarray, Any, Any]:
    """(samples (n, ...) or with `trajectory` every step's (1 + steps, n, ...), the sampler, the samples' labels
    or None) from the EMA model."""
    shape = (args.n, *ckpt.meta["data"]["shape"][1:])
    sampler = _sampler(args.sampler, ckpt, dataset)
    function, labels = _model_function(args, model, args.n)
    samples = sampler.sample(function, shape, np.random.default_rng(args.seed), num_inference_steps=args.steps,
                             return_trajectory=trajectory)
    return samples, sampler, labels


def _grid_title(args: argparse.Namespace, dataset: str, labels: Any) -> str:
    title = f"{dataset}: {args.sampler}, {args.steps} steps"
    if labels is None:
        return title
    which = f"label {args.label}" if args.label is not None else "labels 0-9 by column"
    negative = "" if args.negative_label is None else f", negative {args.negative_label}"
    return f"{title}, {which}, guidance {DEFAULT_GUIDANCE if args.guidance is None else args.guidance:g}{negative}"


# --- demo ---------------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from minidiff.demo import DemoConfig, run_demo

    overrides = {"num_samples": args.samples, "classifier_steps": args.classifier_steps}  # the hidden test flags
    config = DemoConfig(**{k: v for k, v in overrides.items() if v is not None})
    _writable_folder(args.out)
    try:
        run_demo(args.out, minutes=args.minutes, seed=args.seed, steps=args.steps, config=config)
    except KeyboardInterrupt:
        print(f"interrupted: a training checkpoint, if training had started, is saved in {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# --- train ----------------------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from minidiff.train import TrainConfig, Trainer, load_checkpoint

    out = _writable_folder(args.out)
    if args.resume:
        ckpt = load_checkpoint(out)
        description = ckpt.meta["data"].get("description") or {}
        dataset, seed = description.get("dataset"), description.get("data_seed", 0)
        if dataset not in IMAGE_DATASETS + TOY_DATASETS:
            raise CLIError(f"--resume: {ckpt.path} was not written by `python -m minidiff train`")
        budget = {k: v for k, v in (("steps", args.steps), ("minutes", args.minutes)) if v is not None}
        config = TrainConfig.from_dict({**ckpt.meta["config"], **budget})
        data = _dataset(dataset, seed, labels=ckpt.meta["data"].get("labels", False))
        trainer = Trainer.resume(out, data, config=config, data_description=description)
    else:
        if args.dataset is None:
            raise CLIError("--dataset: required for a new run (or pass --resume to continue one)")
        data = _dataset(args.dataset, args.seed, labels=args.conditional)
        num_classes = int(data[1].max()) + 1 if args.conditional else None
        model = _build_model(args.model or ("unet" if args.dataset in IMAGE_DATASETS else "mlp"), args.dataset,
                             data[0], args.seed, num_classes)
        trainer = Trainer(model, _train_config(args, num_classes), data, out,
                          data_description={"dataset": args.dataset, "data_seed": args.seed,
                                            "num_classes": num_classes})
    result = trainer.train()
    if result.interrupted:
        print(f"interrupted at step {result.last_step}: checkpoint saved in {out} (continue with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    loss = f"; last loss {np.mean(result.losses[-50:]):.4g}" if result.losses else ""
    print(f"trained steps {result.first_step}..{result.last_step}{loss}; checkpoint and log.csv in {out}")
    return 0


def _train_config(args: argparse.Namespace, num_classes: int | None) -> Any:
    """The TrainConfig of a new run: the flags given, the dataset kind's TRAIN_DEFAULTS for the others."""
    from minidiff.train import TrainConfig

    defaults = TRAIN_DEFAULTS["images" if args.dataset in IMAGE_DATASETS else "points"]
    chosen = {k: getattr(args, k) if getattr(args, k, None) is not None else v for k, v in defaults.items()}
    if chosen["objective"] == "flow" or chosen["min_snr_gamma"] == 0:
        chosen["min_snr_gamma"] = None  # min-SNR weighting is defined for the VP objectives; 0 turns it off
    if args.steps is not None and args.warmup_steps is None:
        chosen["warmup_steps"] = min(chosen["warmup_steps"], args.steps // 10)
    conditional = {} if num_classes is None else {"label_dropout": args.label_dropout, "null_label": num_classes}
    return TrainConfig(num_train_timesteps=args.timesteps, steps=args.steps, minutes=args.minutes, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, ema_warmup=True, **chosen, **conditional)


# --- sample -----------------------------------------------------------------------------------------------------


def _sample(args: argparse.Namespace) -> int:
    from minidiff import viz
    from minidiff.checkpoint import _write_atomically

    if args.diffusers is not None:
        pipe, dataset = _load_diffusers(args.diffusers), Path(args.diffusers).name
        image = True
    else:
        ckpt, model, dataset = _load(args.checkpoint)
        image = dataset in IMAGE_DATASETS
    if args.gif and not image:
        raise CLIError("--gif: the reverse-process GIF is drawn for image models only")
    out = _writable_folder(args.out)
    if args.diffusers is not None:
        result, sampler, labels = _draw_diffusers(args, pipe, trajectory=args.gif)
    else:
        result, sampler, labels = _draw(args, ckpt, model, dataset, trajectory=args.gif)
    samples = result[-1] if args.gif else result
    if image:
        samples = np.clip(samples, -1.0, 1.0)
    samples = samples.astype(np.float32)
    _write_atomically(out / "samples.npy", lambda f: np.save(f, samples))
    written = ["samples.npy"]
    if image:
        viz.save_image_grid(samples[:100], out / "samples.png", nrow=10, title=_grid_title(args, dataset, labels))
        written.append("samples.png")
        if labels is not None:
            _write_atomically(out / "labels.npy", lambda f: np.save(f, labels))
            written.append("labels.npy")
        if args.gif:
            viz.save_reverse_process_gif(result, viz.frame_labels(sampler.timesteps), out / "reverse_process.gif")
            written.append("reverse_process.gif")
    else:
        from minidiff import data

        reference = getattr(data, dataset)(len(samples), np.random.default_rng(args.seed + 1))
        viz.save_scatter(samples, reference, out / "samples.png",
                         title=f"{dataset}: {args.sampler}, {args.steps} steps")
        written.append("samples.png")
    print(f"wrote {', '.join(written)} ({len(samples)} samples) into {out}")
    return 0


# --- diffusers folders: sample --diffusers, export ----------------------------------------------------------------


def _load_diffusers(path: str) -> Any:
    from minidiff.interop import load_diffusers

    pipe = load_diffusers(path)
    if pipe.unet.class_embedding is not None:
        raise CLIError(f"--diffusers: {path}'s U-Net is class-conditional (num_class_embeds = "
                       f"{pipe.unet.config['num_class_embeds']}); sample --diffusers draws unconditional models (in "
                       "Python: load_diffusers(path).sample(n, rng, class_labels=...))")
    if pipe.sampler is None:
        raise CLIError(f"--diffusers: {path} has no scheduler config (a bare UNet2DModel folder): its noise schedule "
                       "is unknown")
    return pipe


def _draw_diffusers(args: argparse.Namespace, pipe: Any, trajectory: bool = False) -> tuple[np.ndarray, Any, None]:
    """As _draw, from a diffusers folder's U-Net: the folder's own sampler when --sampler names its kind, else
    that kind on the folder's noise schedule and prediction type."""
    from minidiff.samplers.registry import sampler_class

    kind = sampler_class(DIFFUSERS_SCHEDULERS[args.sampler])
    sampler = pipe.sampler
    if not isinstance(sampler, kind):
        try:
            sampler = kind(sampler.schedule, prediction_type=sampler.config["prediction_type"])
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CLIError(f"--sampler: {args.sampler} cannot run {args.diffusers}'s "
                           f"{type(pipe.sampler).__name__} model ({e})") from None
    function, _ = _model_function(args, pipe.unet, args.n)  # (refuses the guidance flags: not conditional)
    samples = sampler.sample(function, pipe.image_shape(args.n), np.random.default_rng(args.seed),
                             num_inference_steps=args.steps, return_trajectory=trajectory)
    return samples, sampler, None


def _export(args: argparse.Namespace) -> int:
    from minidiff.interop import PIPELINES, save_diffusers

    ckpt, model, dataset = _load(args.checkpoint)
    if ckpt.config.objective == "flow":
        raise CLIError("--checkpoint: a flow-matching model has no diffusers pipeline that runs it as minidiff does "
                       "(export a model trained on epsilon, sample or v_prediction)")
    sampler = _sampler(args.sampler, ckpt, dataset)
    path = save_diffusers(model, sampler, args.out, overwrite=args.overwrite)
    print(f"wrote a diffusers {PIPELINES[sampler.diffusers_class]} folder (the EMA U-Net, a "
          f"{sampler.diffusers_class}) into {path}")
    return 0


# --- eval -------------------------------------------------------------------------------------------------------


def _eval(args: argparse.Namespace) -> int:
    from minidiff import metrics

    ckpt, model, dataset = _load(args.checkpoint)
    samples, _, labels = _draw(args, ckpt, model, dataset)
    rng = np.random.default_rng(args.seed + 1)
    if dataset in TOY_DATASETS:
        from minidiff import data

        report = metrics.toy_metrics(samples, getattr(data, dataset), rng)
    else:
        report = _image_report(args, ckpt, model, dataset, np.clip(samples, -1.0, 1.0), labels, rng)
    report["sampler"] = {"name": args.sampler, "steps": args.steps, "num_samples": args.n, "seed": args.seed}
    text = json.dumps(report, indent=1)
    if args.out:
        from minidiff.train import _write_text

        _write_text(_writable_folder(args.out) / "metrics.json", text)
    print(text)
    return 0


def _image_report(args: argparse.Namespace, ckpt: Any, model: Any, dataset: str, samples: np.ndarray,
                  labels: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Classifier metrics against the test split (for guided samples also the fraction the classifier labels as
    requested), and bits per dimension of test images (VP objectives; the unconditional model's for a
    class-conditional one)."""
    from minidiff import data, metrics
    from minidiff.demo import sample_metrics
    from minidiff.diffusion import neg_elbo_bits_per_dim
    from minidiff.diffusion.schedules import NoiseSchedule

    loader = getattr(data, dataset)
    (train_x, train_y), (test_x, test_y) = loader("train"), loader("test")
    classifier, accuracy = metrics.train_classifier(train_x, train_y, rng, test=(test_x, test_y),
                                                    steps=args.classifier_steps)
    report = {**sample_metrics(classifier, samples, test_x, train_x), "classifier_test_accuracy": accuracy}
    if labels is not None:
        predicted = metrics.classifier_probabilities(classifier, samples).argmax(axis=1)  # (n,)
        report["guidance"] = {"scale": DEFAULT_GUIDANCE if args.guidance is None else args.guidance,
                              "negative_label": args.negative_label,
                              "fraction_classified_as_requested": float(np.mean(predicted == labels))}
    config = ckpt.config
    if config.objective == "flow" or args.bpd_examples == 0:
        report["bits_per_dim"] = None
        return report
    schedule = NoiseSchedule.named(config.schedule, config.num_train_timesteps)
    # Fashion-MNIST is 8-bit: a discretized decoder over 256 bins. The digits have 17 grey levels, not on the
    # 8-bit grid: their L_0 is the Gaussian decoder's density (a continuous bound, not bits of a code).
    decoder = "discretized" if dataset == "fashion_mnist" else "gaussian"
    network = _network(model) if not _is_conditional(model) else _unconditional(model)
    estimate = neg_elbo_bits_per_dim(schedule, network, test_x[:args.bpd_examples], rng=rng,
                                     prediction_type=config.objective, decoder=decoder)
    report["bits_per_dim"] = {"value": estimate.bits_per_dim, "stderr": estimate.standard_error,
                              "num_examples": estimate.num_examples, "split": "test", "decoder": decoder}
    return report


def _unconditional(model: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A class-conditional model's unconditional prediction: the null label for every example."""
    from minidiff import guidance

    conditional = guidance.conditional(model)
    return lambda x, t: conditional(x, t, np.full(len(x), model.null_class_label))


# --- edit -------------------------------------------------------------------------------------------------------

EDIT_STEPS = {"sdedit": 50, "inpaint": 250, "invert": 50}  # default sampling steps by mode
DEFAULT_T0 = 0.5


def _edit(args: argparse.Namespace) -> int:
    from minidiff import viz
    from minidiff.checkpoint import _write_atomically
    from minidiff.data.files import read_images

    _check_edit_flags(args)
    ckpt, model, dataset = _load(args.checkpoint)
    if dataset not in IMAGE_DATASETS:
        raise CLIError(f"--checkpoint: edit works on image models; this one was trained on {dataset}")
    if ckpt.config.objective == "flow":
        raise CLIError("--checkpoint: edit needs a model of the VP objectives (epsilon, sample, v_prediction), "
                       "not flow matching")
    image_shape = tuple(ckpt.meta["data"]["shape"][1:])  # (C, H, W)
    x = read_images(args.input, "--input", image_shape)  # (N, C, H, W) in [-1, 1]
    mask = read_images(args.mask, "--mask", image_shape, mask=True) if args.mode == "inpaint" else None
    out = _writable_folder(args.out)
    steps = args.steps or min(EDIT_STEPS[args.mode], ckpt.config.num_train_timesteps)
    edited, latent = _run_edit(args, ckpt, model, dataset, x, mask, steps)
    edited = np.clip(edited, -1.0, 1.0).astype(np.float32)
    _write_atomically(out / "edited.npy", lambda f: np.save(f, edited))
    written = ["edited.npy"]
    if latent is not None:
        _write_atomically(out / "latent.npy", lambda f: np.save(f, latent.astype(np.float32)))
        written.append("latent.npy")
    rows = [x] if mask is None else [x, np.where(mask > 0, x, 0.0)]  # the input (and what is known of it)
    shown = min(len(x), 10)
    grid = np.concatenate([row[:shown] for row in [*rows, edited]])
    caption = (f"SDEdit from t0 = {args.t0:g}" if args.mode == "sdedit" else
               f"inpainting, resample {args.resample}" if args.mode == "inpaint" else "DDIM inversion and decoding")
    viz.save_image_grid(grid, out / "edited.png", nrow=shown,
                        title=f"{caption}, {steps} steps: rows input{', known' if mask is not None else ''}, edited")
    written.append("edited.png")
    print(f"wrote {', '.join(written)} ({len(edited)} images) into {out}")
    return 0


def _check_edit_flags(args: argparse.Namespace) -> None:
    if args.mode == "inpaint" and args.mask is None:
        raise CLIError("--mask: required with --mode inpaint (1 or white: known pixels, 0 or black: to fill)")
    for flag, value, mode in (("--mask", args.mask, "inpaint"), ("--t0", args.t0, "sdedit")):
        if value is not None and args.mode != mode:
            raise CLIError(f"{flag}: only for --mode {mode}, got --mode {args.mode}")
    if args.t0 is not None and not 0.0 <= args.t0 <= 1.0:
        raise CLIError(f"--t0: expected the fraction of the chain in [0, 1] (0: the input, 1: a new sample), "
                       f"got {args.t0:g}")
    if args.mode != "inpaint" and (args.resample, args.jump) != (1, 1):
        raise CLIError(f"--resample, --jump: only for --mode inpaint, got --mode {args.mode}")
    if args.mode == "sdedit" and args.t0 is None:
        args.t0 = DEFAULT_T0


def _run_edit(args: argparse.Namespace, ckpt: Any, model: Any, dataset: str, x: np.ndarray, mask: Any,
              steps: int) -> tuple[np.ndarray, Any]:
    """(the edited batch, the DDIM latent for --mode invert else None)."""
    from minidiff import editing, samplers
    from minidiff.diffusion.schedules import NoiseSchedule

    rng = np.random.default_rng(args.seed)
    function, _ = _model_function(args, model, len(x))
    config = ckpt.config
    schedule = NoiseSchedule.named(config.schedule, config.num_train_timesteps)
    if args.mode == "sdedit":
        sampler = _sampler(args.sampler, ckpt, dataset)
        return editing.sdedit(function, sampler, x, args.t0, rng, num_inference_steps=steps), None
    if args.mode == "inpaint":
        sampler = samplers.DDPMSampler(schedule, prediction_type=config.objective)
        return editing.inpaint(function, sampler, x, mask, rng, resample=args.resample, jump=args.jump,
                               num_inference_steps=steps), None
    # Invert with the unconditional model (the input's class is unknown), decode with the (guided) one.
    encoder = _unconditional(model) if _is_conditional(model) else function
    sampler = samplers.DDIMSampler(schedule, prediction_type=config.objective, clip_sample=False)
    inversion = editing.invert_and_edit(encoder, sampler, x, edit_model=function, num_inference_steps=steps)
    return inversion.x, inversion.latent


# --- the parser ---------------------------------------------------------------------------------------------------


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _nonnegative(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(0) if kind(text) == 0 else _positive(kind)(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected a non-negative {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


_nonnegative_int = _nonnegative(int)


def _add_sampling_arguments(p: argparse.ArgumentParser, n: int, diffusers: bool = False) -> None:
    """diffusers: --checkpoint or --diffusers DIR (a diffusers folder), one of them required."""
    source = p.add_mutually_exclusive_group(required=True) if diffusers else p
    source.add_argument("--checkpoint", required=not diffusers,
                        help="a training output folder (or its checkpoint.json)")
    if diffusers:
        source.add_argument("--diffusers", metavar="DIR",
                            help="a diffusers folder (model_index.json, unet/, scheduler/) instead of --checkpoint: "
                            "its U-Net and noise schedule, with --sampler (its own scheduler when it is of that kind)")
    p.add_argument("--sampler", choices=SAMPLERS, default="dpm",
                   help="ddpm, ddim, dpm (DPM-Solver++ 2M), euler, heun (flow models: euler, heun) (default dpm)")
    p.add_argument("--steps", type=_positive(int), default=20, help="sampling steps (default 20)")
    p.add_argument("--n", type=_positive(int), default=n, help=f"number of samples (default {n})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_guidance_arguments(p)


def _add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", type=_nonnegative_int,
                   help="class-conditional models: the class to draw (default: every class in turn)")
    p.add_argument("--guidance", type=_nonnegative(float),
                   help=f"class-conditional models: the classifier-free guidance scale w (0: unconditional, 1: "
                   f"conditional; default {DEFAULT_GUIDANCE:g})")
    p.add_argument("--negative-label", type=_nonnegative_int,
                   help="class-conditional models: a class to steer away from (negative conditioning)")


def build_parser() -> argparse.ArgumentParser:
    from minidiff.demo import DEFAULT_MINUTES

    parser = _Parser(prog="python -m minidiff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, backends and how the C++ extension was built").set_defaults(run=_info)
    ex = sub.add_parser("exercises", help="regenerate the student stubs in minidiff/exercises/")
    ex.add_argument("--check", action="store_true", help="only report stubs that are out of date")
    ex.add_argument("--force", action="store_true", help="overwrite stubs even where you edited them")
    ex.set_defaults(run=_exercises)
    sc = sub.add_parser("student-copy", help="copy the project without the exercises' solutions, for students",
                        description="Write the project's files (those git tracks, or the source tree) to DIR with "
                        "every # BEGIN SOLUTION region of the library replaced by its stub's raise "
                        "NotImplementedError, fresh stubs in minidiff/exercises/, and the library calling the "
                        "student's stubs everywhere (notebooks, tests, pytest --student).")
    sc.add_argument("dir", metavar="DIR", help="a new or empty folder")
    sc.add_argument("--untracked", action="store_true",
                    help="also copy the files git does not track yet (those it does not ignore)")
    sc.set_defaults(run=_student_copy)
    eq = sub.add_parser("equations", help="the equation index: each id's formula, paper, code, tests and notebooks")
    eq.add_argument("ids", nargs="*", help="show these ids in full (e.g. E11 E12); default: a line per id")
    eq.add_argument("--write", action="store_true", help="regenerate docs/EQUATIONS.md")
    eq.add_argument("--check", action="store_true", help="exit 1 when docs/EQUATIONS.md is out of date")
    eq.set_defaults(run=_equations)

    bk = sub.add_parser("book", help="run every chapter notebook and write the book as a static website",
                        description="Execute the chapter notebooks and write a static HTML site into --out: one page "
                        "per chapter with its figures and printed results, math as MathML (no script, reads offline), "
                        "an index and the equation index with every [E11] linked. A previous book in --out is replaced "
                        "once the new one is complete; a failing chapter leaves nothing behind.")
    bk.add_argument("--out", required=True, help="the site's folder (index.html in it)")
    bk.add_argument("--fast", action="store_true", help="run the notebooks with MINIDIFF_FAST=1 (seconds, not minutes)")
    bk.add_argument("--chapters", metavar="NN,NN", help="only these chapters, e.g. 02,04 (default: all)")
    bk.add_argument("--notebooks", metavar="DIR", help="the folder of the chapter notebooks NN_*.py (default: the "
                    "project's notebooks/)")
    bk.add_argument("--timeout", type=_positive(float), default=1800.0,
                    help="seconds one cell may run before the build fails (default 1800)")
    bk.set_defaults(run=_book)

    demo = sub.add_parser("demo", help="train a U-Net on the 8x8 digits, sample, and write pictures and metrics",
                          description="Train a small U-Net on the 8x8 digits within a time budget, sample 300 digits "
                          "with DPM-Solver++ (EMA weights), and write samples.png, samples.npy, reverse_process.png, "
                          "reverse_process.gif, loss.png, metrics.json and the checkpoint into one folder.")
    demo.add_argument("--minutes", type=_positive(float), default=DEFAULT_MINUTES,
                      help=f"the whole demo's time budget in minutes (default {DEFAULT_MINUTES})")
    demo.add_argument("--out", default="minidiff-demo", help="output folder (default minidiff-demo/)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--steps", type=_positive(int), default=None, help=argparse.SUPPRESS)  # tests: a tiny run
    demo.add_argument("--samples", type=_positive(int), default=None, help=argparse.SUPPRESS)
    demo.add_argument("--classifier-steps", type=_positive(int), default=None, help=argparse.SUPPRESS)
    demo.set_defaults(run=_demo)

    train = sub.add_parser("train", help="train a model on a dataset, with checkpoints and a CSV log")
    train.add_argument("--dataset", choices=IMAGE_DATASETS + TOY_DATASETS, help="the training data")
    train.add_argument("--model", choices=MODELS, help="unet (images) or mlp (2-D points); default: the dataset's")
    train.add_argument("--objective", choices=OBJECTIVES,
                       help="what the network predicts (default: epsilon for 2-D points, v_prediction for images)")
    train.add_argument("--schedule", choices=("linear", "cosine"),
                       help="noise schedule (VP; default: linear for 2-D points, cosine for images)")
    train.add_argument("--timesteps", type=_positive(int), default=1000, help="T of the VP schedule (default 1000)")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive(int), help="train until this step (with --resume: the new total)")
    budget.add_argument("--minutes", type=_positive(float), help="training time in minutes")
    train.add_argument("--out", required=True, help="output folder (checkpoint.json, weights, log.csv)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out with a new budget")
    train.add_argument("--batch-size", type=_positive(int), help="batch size (default: 512 points, 64 images)")
    train.add_argument("--lr", type=_positive(float), help="learning rate (default 2e-3)")
    train.add_argument("--ema-decay", type=float,
                       help="EMA decay, reached after a warmup (default: 0.999 points, 0.99 images)")
    train.add_argument("--warmup-steps", type=_nonnegative_int, help="LR warmup steps (default: 100 points, 50 images)")
    train.add_argument("--min-snr-gamma", type=float,
                       help="min-SNR-gamma loss weighting of VP objectives (default: 5 for images, off for points; "
                       "0: off)")
    train.add_argument("--conditional", action="store_true",
                       help="class-conditional U-Net (digits, fashion_mnist) with label dropout, for guidance")
    train.add_argument("--label-dropout", type=float, default=0.1,
                       help="with --conditional: the probability that a label is replaced by the null label "
                       "(default 0.1)")
    train.add_argument("--checkpoint-every", type=_positive(int), default=500, help="steps between checkpoints")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.set_defaults(run=_train)

    sample = sub.add_parser("sample", help="draw samples from a checkpoint: samples.npy and a grid or scatter")
    _add_sampling_arguments(sample, 100, diffusers=True)
    sample.add_argument("--out", required=True, help="output folder")
    sample.add_argument("--gif", action="store_true", help="also write reverse_process.gif (image models)")
    sample.set_defaults(run=_sample)

    export = sub.add_parser("export", help="write a checkpoint's U-Net and sampler as a diffusers pipeline folder",
                            description="Write the EMA U-Net of a checkpoint and a sampler on its noise schedule as a "
                            "folder that diffusers' DDPMPipeline / DDIMPipeline.from_pretrained (and its training "
                            "example train_unconditional.py) load as it is; load_diffusers or sample --diffusers "
                            "read it back.")
    export.add_argument("--checkpoint", required=True, help="a training output folder (or its checkpoint.json)")
    export.add_argument("--out", required=True, help="the diffusers folder to write")
    export.add_argument("--sampler", choices=EXPORT_SAMPLERS, default="ddpm",
                        help="the scheduler of the folder: ddpm (DDPMPipeline), ddim (DDIMPipeline), dpm "
                        "(DPM-Solver++ in a DDPMPipeline) (default ddpm)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    export.set_defaults(run=_export)

    evaluate = sub.add_parser("eval", help="metrics of a checkpoint's samples (and bits per dimension for images)")
    _add_sampling_arguments(evaluate, 500)
    evaluate.add_argument("--bpd-examples", type=_nonnegative_int, default=32,
                          help="test images for the bits-per-dimension bound (T model calls each; 0: skip)")
    evaluate.add_argument("--classifier-steps", type=_positive(int), default=500,
                          help="training steps of the feature classifier (images; default 500)")
    evaluate.add_argument("--out", help="also write metrics.json into this folder")
    evaluate.set_defaults(run=_eval)

    edit = sub.add_parser("edit", help="edit images with a checkpoint: SDEdit, inpainting, DDIM inversion",
                          description="Edit your own images (PNG or .npy of the model's image size) with a trained "
                          "image model: sdedit noises them to --t0 and denoises (E49); inpaint fills where --mask "
                          "is 0 (E50, RePaint's --resample); invert encodes them to DDIM latents and decodes "
                          "(E33; with --label, into another class). Writes edited.npy, edited.png (and latent.npy).")
    edit.add_argument("--checkpoint", required=True, help="a training output folder (or its checkpoint.json)")
    edit.add_argument("--mode", choices=("sdedit", "inpaint", "invert"), required=True, help="the kind of edit")
    edit.add_argument("--input", required=True, help="the image(s): .png, or .npy of shape (H, W), (C, H, W) or "
                      "(N, C, H, W) in [-1, 1]")
    edit.add_argument("--mask", help="inpaint: .png (white known, black to fill) or .npy of 1 (known) and 0")
    edit.add_argument("--t0", type=float, help="sdedit: how far to noise, a fraction of the chain in [0, 1] "
                      "(default 0.5)")
    edit.add_argument("--sampler", choices=("ddpm", "ddim", "dpm"), default="ddim",
                      help="sdedit: the sampler (default ddim); inpaint uses ddpm, invert ddim")
    edit.add_argument("--steps", type=_positive(int),
                      help="sampling steps (default: sdedit 50, inpaint 250, invert 50)")
    edit.add_argument("--resample", type=_positive(int), default=1,
                      help="inpaint: RePaint's resamplings per step (default 1: none)")
    edit.add_argument("--jump", type=_positive(int), default=1, help="inpaint: RePaint's jump length (default 1)")
    edit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    edit.add_argument("--out", required=True, help="output folder")
    _add_guidance_arguments(edit)
    edit.set_defaults(run=_edit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and not args.resume and args.steps is None and args.minutes is None:
        print("python -m minidiff train: error: give a budget, --steps N or --minutes M", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CLIError, ValueError, TypeError, FileNotFoundError, FileExistsError, OSError, ImportError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    text = str(error) if not isinstance(error, OSError) or error.filename is None else \
        f"{error.strerror or error}: {error.filename}"
    return " ".join(text.split())
