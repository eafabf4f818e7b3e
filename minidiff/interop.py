"""diffusers-format folders in and out: a published UNet2DModel pipeline runs in minidiff, and a minidiff U-Net
goes to diffusers (and so to its multi-GPU training with accelerate) without retraining.

    pipe = load_diffusers("ddpm-cifar10")           # a folder written by save_pretrained (or a bare UNet folder)
    images = pipe.sample(16, np.random.default_rng(0), num_inference_steps=50)       # (16, 3, 32, 32)
    save_diffusers(unet, DDPMSampler(schedule), "my-model")   # DDPMPipeline.from_pretrained("my-model") runs it

The folder, as diffusers' `save_pretrained` writes it:

    model_index.json                          the pipeline class and its parts: {"unet": ["diffusers",
                                              "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"], ...}
    unet/config.json                          UNet2DModel's constructor arguments (minidiff's UNet speaks them)
    unet/diffusion_pytorch_model.safetensors  its state dict: minidiff's UNet has the same keys and shapes
    scheduler/scheduler_config.json           the scheduler's arguments: a minidiff sampler's `from_config`

A bare UNet folder is unet/ alone (config.json and the weights; a scheduler_config.json beside them is read).
Older checkpoints name the attention projections query/key/value/proj_attn (for to_q/to_k/to_v/to_out.0),
sometimes with 1x1-convolution weights (C, C, 1, 1): both are read. Weights are read memory-mapped, float32,
float16 or bfloat16 (converted to the UNet's dtype). Every option of UNet2DModel that minidiff does not
implement (a block type, a Fourier time embedding, a class embedding of another kind, ...) is refused by name.

The count of time. diffusers' models are trained on k = 0..T-1, minidiff's on t = k + 1 (see
minidiff.samplers.base). Both embed the number they are given with E43's sinusoids, and shifting that number
by d rotates each (sin, cos) pair of the embedding by the angle d w_i:

    sin((t + d) w) = sin(t w) cos(d w) + cos(t w) sin(d w),   cos((t + d) w) = cos(t w) cos(d w) - sin(t w) sin(d w),

a linear map of emb(t), which folds exactly into the first layer that reads it, time_embedding.linear_1:
W <- W R_d. The importer folds d = -1 (the minidiff UNet at t computes what diffusers' computes at k = t - 1)
and the exporter d = +1. Every other weight moves as it is, each side runs in its own count, and a loaded UNet
works with everything in minidiff (its samplers, the Trainer, checkpoints) as a UNet trained here would.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minidiff import checkpoint
from minidiff.autodiff.tensor import Tensor, no_grad
from minidiff.checkpoint import _write_atomically
from minidiff.diffusion.schedules import DDPM_BETA_RANGE, LATENT_BETA_RANGE, short_chain_beta_range
from minidiff.nn.embedding import timestep_embedding
from minidiff.nn.layers import _float_dtype
from minidiff.nn.module import Module
from minidiff.nn.unet import DOWN_BLOCK_TYPES, TIME_SCALE_SHIFTS, UP_BLOCK_TYPES, UNet
from minidiff.samplers.base import SCHEDULE_KEYS, Sampler, schedule_from_config
from minidiff.samplers.registry import from_config

DIFFUSERS_VERSION = "0.42.1"  # the version whose files these are (written into every config)
MODEL_INDEX = "model_index.json"
CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLED_WEIGHTS_NAME = "diffusion_pytorch_model.bin"

# Every key of UNet2DModel's config (what save_pretrained writes) and diffusers' default for it: a config.json
# that leaves a key out means this value.
UNET2D_DEFAULTS: dict[str, Any] = {
    "act_fn": "silu", "add_attention": True, "attention_head_dim": 8, "attn_norm_num_groups": None,
    "block_out_channels": [224, 448, 672, 896], "center_input_sample": False, "class_embed_type": None,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "downsample_padding": 1, "downsample_type": "conv", "dropout": 0.0, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2D",
    "norm_eps": 1e-5, "norm_num_groups": 32, "num_class_embeds": None, "num_train_timesteps": None,
    "out_channels": 3, "resnet_time_scale_shift": "default", "sample_size": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                                            "UpBlock2D"],
    "upsample_type": "conv",
}
# The keys that are arguments of minidiff's UNet, with the same name and meaning.
SHARED_KEYS = ("sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
               "down_block_types", "up_block_types", "attention_head_dim", "norm_num_groups", "norm_eps",
               "resnet_time_scale_shift", "flip_sin_to_cos", "freq_shift", "downsample_padding", "num_class_embeds",
               "dropout", "mid_block_scale_factor")
# Keys minidiff implements at one setting only: key -> (the values meaning that setting, what minidiff does).
FIXED_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "center_input_sample": ((False,), "the input as it is (no 2 x - 1)"),
    "time_embedding_type": (("positional",), "the sinusoidal timestep embedding (E43)"),
    "mid_block_type": (("UNetMidBlock2D",), "a mid block of resnet, attention, resnet"),
    "add_attention": ((True,), "attention in the mid block"),
    "downsample_type": (("conv",), "a stride-2 convolution between levels"),
    "upsample_type": (("conv",), "nearest x2 and a convolution between levels"),
    "act_fn": (("silu", "swish"), "SiLU"),
    "class_embed_type": ((None,), "a class embedding table, num_class_embeds"),
}
# The minidiff samplers an exported folder can run, and the diffusers pipeline that runs each as minidiff does
# (DDPMPipeline's loop calls scheduler.step on the model's output from N(0, I): right for any scheduler that
# needs no scale_model_input and starts at sigma 1).
PIPELINES = {"DDPMScheduler": "DDPMPipeline", "DDIMScheduler": "DDIMPipeline",
             "DPMSolverMultistepScheduler": "DDPMPipeline"}
_OLD_ATTENTION = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
_NEW_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
TIME_WEIGHT = "time_embedding.linear_1.weight"


# ---------------------------------------------------------------------------------------------------
# Loading


@dataclass
class DiffusersPipeline:
    """What `load_diffusers` read: the UNet (minidiff's count of time, t = k + 1), the sampler its scheduler
    config describes (None for a bare UNet folder without one), and both configs as written in the folder."""

    unet: UNet
    sampler: Sampler | None
    config: dict[str, Any]
    scheduler_config: dict[str, Any] | None
    path: Path

    def denoiser(self, class_labels: Any = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The UNet as the samplers' model(x, t) on arrays (t = 1..T), in eval mode, without a graph;
        class_labels (B,) for a class-conditional UNet."""
        unet = self.unet.eval()

        def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            with no_grad():
                return unet(Tensor(x), t, class_labels).data

        return model

    def sample(self, num_samples: int, rng: np.random.Generator, *, num_inference_steps: int = 50,
               sampler: Sampler | None = None, class_labels: Any = None, x_T: np.ndarray | None = None,
               progress: bool = True) -> np.ndarray:
        """num_samples images (N, in_channels, H, W) of the config's sample_size, unclipped, drawn by `sampler`
        (default: the folder's) from x_T ~ N(0, I) with `rng` (or the given x_T)."""
        sampler = sampler if sampler is not None else self.sampler
        if sampler is None:
            raise ValueError(f"sampler: {self.path} has no scheduler config; pass a minidiff sampler")
        return sampler.sample(self.denoiser(class_labels), self.image_shape(num_samples), rng,
                              num_inference_steps=num_inference_steps, x_T=x_T, dtype=self.unet.conv_in.weight.dtype,
                              progress=progress)

    def image_shape(self, num_samples: int) -> tuple[int, int, int, int]:
        """(num_samples, in_channels, H, W) of the config's sample_size (an int, or [H, W])."""
        size = self.unet.config["sample_size"]
        if size is None:
            raise ValueError(f"sample_size: {self.path}'s config.json gives no image size to sample at")
        height, width = (size, size) if isinstance(size, int) else size
        return num_samples, self.unet.config["in_channels"], height, width


def load_diffusers(path: str | os.PathLike, *, dtype: Any = np.float32, variant: str | None = None
                   ) -> DiffusersPipeline:
    """Read a diffusers folder: a pipeline (model_index.json, unet/, scheduler/) or a bare UNet2DModel folder
    (config.json and the weights, optionally scheduler_config.json). Returns a DiffusersPipeline: the UNet
    with the folder's weights in `dtype` (float32 or float64; the time embedding's first layer rotated to
    minidiff's count of time, see the module docstring), the sampler `from_config` of the scheduler config,
    and the configs. variant: read diffusion_pytorch_model.<variant>.safetensors (say "fp16").

    Raises FileNotFoundError for a missing file and ValueError naming the file and the key for anything minidiff
    does not implement or that does not fit: a block type, an option, an unknown config key, a scheduler class,
    a missing, extra or misshapen weight, a truncated or corrupt file.
    """
    root = Path(path)
    dtype = _float_dtype(dtype)
    if variant is not None and (not isinstance(variant, str) or not re.fullmatch(r"[\w-]+", variant)):
        raise ValueError(f"variant: expected a name such as 'fp16', got {variant!r}")
    if (root / MODEL_INDEX).is_file():
        unet_dir, scheduler_file = _pipeline_parts(root / MODEL_INDEX)
    elif (root / CONFIG_NAME).is_file():
        unet_dir, scheduler_file = root, root / SCHEDULER_CONFIG_NAME
        scheduler_file = scheduler_file if scheduler_file.is_file() else None
    else:
        raise FileNotFoundError(f"path: {root} holds neither {MODEL_INDEX} (a diffusers pipeline folder) nor "
                                f"{CONFIG_NAME} (a UNet2DModel folder)")
    config = _read_json(unet_dir / CONFIG_NAME)
    arguments = unet_arguments(config, unet_dir / CONFIG_NAME)
    try:
        unet = UNet(**arguments, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{unet_dir / CONFIG_NAME}: {e}") from None
    unet.load_state_dict(_read_weights(unet_dir, variant, unet, dtype))
    scheduler_config, sampler = None, None
    if scheduler_file is not None:
        scheduler_config = _read_json(scheduler_file)
        try:
            sampler = from_config(scheduler_config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{scheduler_file}: {e}") from None
    return DiffusersPipeline(unet.eval(), sampler, config, scheduler_config, root)


def _pipeline_parts(index_file: Path) -> tuple[Path, Path]:
    """(the unet folder, the scheduler config) of a pipeline that model_index.json describes, after checking
    that its parts are a UNet2DModel and a scheduler and nothing else."""
    index = _read_json(index_file)
    pipeline = index.get("_class_name", "the pipeline")
    parts = {name: entry for name, entry in index.items() if not name.startswith("_") and entry != [None, None]}
    others = sorted(set(parts) - {"unet", "scheduler"})
    if others:
        described = ", ".join(f"{k} ({_class_of(parts[k])})" for k in others)
        raise ValueError(f"{index_file}: {pipeline} also has {described}; minidiff loads pipelines of a UNet2DModel "
                         "and a scheduler only")
    if "unet" not in parts or "scheduler" not in parts:
        raise ValueError(f"{index_file}: {pipeline} names no {'unet' if 'unet' not in parts else 'scheduler'}")
    if _class_of(parts["unet"]) != "UNet2DModel":
        raise ValueError(f"{index_file}: its unet is a {_class_of(parts['unet'])}; minidiff loads UNet2DModel only")
    root = index_file.parent
    unet_dir, scheduler_dir = root / "unet", root / "scheduler"
    # The hub's earliest pipelines keep their parts' files at the top level (and sometimes in subfolders too).
    if not unet_dir.is_dir() and (root / CONFIG_NAME).is_file():
        unet_dir = root
    if not scheduler_dir.is_dir() and (root / SCHEDULER_CONFIG_NAME).is_file():
        scheduler_dir = root
    return unet_dir, scheduler_dir / SCHEDULER_CONFIG_NAME


def _class_of(entry: Any) -> str:
    """The class name of a model_index.json entry ["library", "ClassName"]."""
    return str(entry[1]) if isinstance(entry, list) and len(entry) == 2 else repr(entry)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        value = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(value).__name__}")
    return value


def unet_arguments(config: Mapping[str, Any], source: str | os.PathLike = "config") -> dict[str, Any]:
    """The arguments of minidiff's UNet for a diffusers UNet2DModel config (a dict as in config.json; missing
    keys take diffusers' defaults). Raises ValueError naming `source` and the key of anything that minidiff
    does not implement or does not know."""
    def refuse(message: str) -> ValueError:
        return ValueError(f"{source}: {message}")

    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise refuse(f"_class_name {config['_class_name']!r}: minidiff loads UNet2DModel only")
    unknown = [key for key in config if not key.startswith("_") and key not in UNET2D_DEFAULTS]
    if unknown:
        raise refuse(f"{unknown[0]!r} is not a config key of diffusers' UNet2DModel ({DIFFUSERS_VERSION}); "
                     "minidiff does not know what it means")
    cfg = {**UNET2D_DEFAULTS, **config}
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if not isinstance(cfg[key], list | tuple) or not cfg[key]:
            raise refuse(f"{key}: expected a non-empty list, got {cfg[key]!r}")
    for key, (allowed, meaning) in FIXED_KEYS.items():
        if not any(cfg[key] == a and type(cfg[key]) is type(a) for a in allowed):
            raise refuse(f"{key}={cfg[key]!r} is not implemented by minidiff (it implements "
                         f"{' or '.join(map(repr, allowed))}: {meaning})")
    channels = cfg["block_out_channels"]
    if cfg["time_embedding_dim"] not in (None, 4 * channels[0]):
        raise refuse(f"time_embedding_dim={cfg['time_embedding_dim']!r} is not implemented by minidiff (it "
                     f"implements null: 4 x block_out_channels[0] = {4 * channels[0]})")
    if cfg["resnet_time_scale_shift"] not in TIME_SCALE_SHIFTS:
        raise refuse(f"resnet_time_scale_shift={cfg['resnet_time_scale_shift']!r} is not implemented by minidiff "
                     f"(it implements {', '.join(TIME_SCALE_SHIFTS)})")
    mid_groups = cfg["norm_num_groups"] if cfg["resnet_time_scale_shift"] == "default" else None
    if cfg["attn_norm_num_groups"] not in (None, mid_groups):
        raise refuse(f"attn_norm_num_groups={cfg['attn_norm_num_groups']!r} is not implemented by minidiff (its mid "
                     f"block's attention has {mid_groups} groups, diffusers' rule for null)")
    for key, implemented in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
        kinds = [k.removeprefix("UNetRes") if isinstance(k, str) else k for k in cfg[key]]  # as diffusers reads them
        for kind in kinds:
            if kind not in implemented:
                raise refuse(f"{key}: {kind!r} is not implemented by minidiff (it implements "
                             f"{', '.join(implemented)})")
        cfg[key] = tuple(kinds)
    arguments = {key: cfg[key] for key in SHARED_KEYS}
    arguments["block_out_channels"] = tuple(channels)
    return arguments


def _read_weights(folder: Path, variant: str | None, unet: UNet, dtype: np.dtype) -> dict[str, np.ndarray]:
    """The folder's state dict in dtype, memory-mapped, in minidiff's key layout and count of time, checked
    against the UNet's keys and shapes (a ValueError naming the file and the keys otherwise)."""
    name = WEIGHTS_NAME if variant is None else WEIGHTS_NAME.replace(".safetensors", f".{variant}.safetensors")
    path = folder / name
    if not path.is_file():
        pickled = folder / PICKLED_WEIGHTS_NAME
        hint = (f"; {pickled.name} is a PyTorch pickle, which minidiff does not read: convert it once with "
                f"diffusers, UNet2DModel.from_pretrained(folder).save_pretrained(folder)") if pickled.is_file() else ""
        raise FileNotFoundError(f"{path}: no such file{hint}")
    expected = {key: tensor.shape for key, tensor in unet.state_dict(keep_vars=True).items()}
    state = _modern_attention_keys(checkpoint.load(path, mmap=True, dtype=dtype), expected, path)
    _check_weights(state, expected, path)
    return shift_time_embedding(state, unet.config, -1)


def _modern_attention_keys(state: dict[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                           path: Path) -> dict[str, np.ndarray]:
    """query/key/value/proj_attn renamed to_q/to_k/to_v/to_out.0 (the older layout), and 1x1-convolution
    weights (C, C, 1, 1) of those projections as the Linear weights (C, C) they are."""
    out = {}
    for key, array in state.items():
        old = _OLD_ATTENTION.fullmatch(key)
        if old:
            key = f"{old[1]}.{_NEW_NAMES[old[2]]}.{old[3]}"
            if key in state or key in out:
                raise ValueError(f"{path}: holds both {old[0]} and {key} (two layouts of one attention)")
        shape = expected.get(key)
        if ".attentions." in key and shape is not None and len(shape) == 2 and array.shape == (*shape, 1, 1):
            array = array.reshape(shape)  # (C, C, 1, 1) -> (C, C)
        out[key] = array
    return out


def _check_weights(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], path: Path) -> None:
    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    misshapen = [f"{k} is {tuple(state[k].shape)} (the config's UNet needs {shape})"
                 for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape]
    problems = ([f"missing {len(missing)} weights: {listed(missing)}"] if missing else []) \
        + ([f"{len(extra)} weights the UNet has no place for: {listed(extra)}"] if extra else []) \
        + ([f"shape mismatch: {listed(misshapen)}"] if misshapen else [])
    if problems:
        raise ValueError(f"{path}: does not fit the UNet its config.json describes: " + "; ".join(problems))


def shift_time_embedding(state: Mapping[str, np.ndarray], config: Mapping[str, Any], d: float
                         ) -> dict[str, np.ndarray]:
    """[E43] A copy of a UNet's state dict whose network computes at t what the original computed at t + d.

    With w_i the embedding's frequencies, emb(t + d) = R_d emb(t), R_d rotating each (sin(t w_i), cos(t w_i))
    pair by d w_i; so time_embedding.linear_1's weight W becomes W R_d, column pairs (s_i, c_i) mixed as
    W'_s = W_s cos(d w_i) - W_c sin(d w_i),  W'_c = W_s sin(d w_i) + W_c cos(d w_i). Computed in float64.
    config: the UNet's (block_out_channels, flip_sin_to_cos, freq_shift)."""
    dim = config["block_out_channels"][0]
    half = dim // 2
    rotation = timestep_embedding(np.array([d], np.float64), dim, flip_sin_to_cos=config["flip_sin_to_cos"],
                                  freq_shift=config["freq_shift"])[0]  # (dim,): sin(d w), cos(d w) (or flipped)
    sin_cols, cos_cols = np.arange(half), np.arange(half, 2 * half)
    if config["flip_sin_to_cos"]:
        sin_cols, cos_cols = cos_cols, sin_cols
    s, c = rotation[sin_cols], rotation[cos_cols]  # (half,) each
    weight = np.asarray(state[TIME_WEIGHT], np.float64)  # (4 C0, C0)
    rotated = weight.copy()
    rotated[:, sin_cols] = weight[:, sin_cols] * c - weight[:, cos_cols] * s
    rotated[:, cos_cols] = weight[:, sin_cols] * s + weight[:, cos_cols] * c
    return {**state, TIME_WEIGHT: rotated.astype(state[TIME_WEIGHT].dtype)}


# ---------------------------------------------------------------------------------------------------
# Saving


def save_diffusers(model: Module, sampler: Sampler | None, path: str | os.PathLike, *,
                   overwrite: bool = False) -> Path:
    """Write `model` (a minidiff UNet, trained in minidiff's count of time) and `sampler` as a diffusers folder
    that UNet2DModel.from_pretrained and the pipeline's from_pretrained load as it is: model_index.json (DDPMPipeline
    for a DDPMSampler or DPMSolverMultistepSampler, DDIMPipeline for a DDIMSampler), unet/config.json with every
    key diffusers writes, unet/diffusion_pytorch_model.safetensors (float32, the time embedding rotated to
    diffusers' count), scheduler/scheduler_config.json (the sampler's config, its schedule by name when one
    describes it exactly, else as trained_betas). sampler None: a bare UNet folder. DDIM's eta is an argument of
    DDIMPipeline's call, not of the folder.

    The folder is written beside `path` under a temporary name, then renamed into place: a crash leaves no
    half-written folder at `path`. An existing non-empty `path` is replaced only with overwrite=True.
    Returns the path. Refuses, by name, what UNet2DModel cannot express (an MLPDenoiser, cross-attention)
    and samplers no diffusers pipeline runs as minidiff does.
    """
    path = Path(path)
    config = unet_config(model)
    scheduler = None if sampler is None else scheduler_config(sampler)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite: expected True or False, got {overwrite!r}")
    _check_destination(path, overwrite)
    state = {k: np.asarray(v, np.float32) for k, v in model.state_dict().items()}
    state = shift_time_embedding(state, model.config, +1)

    def write(folder: Path) -> None:
        unet_dir = folder if scheduler is None else folder / "unet"
        unet_dir.mkdir(exist_ok=True)
        _write_json(unet_dir / CONFIG_NAME, config)
        checkpoint.save(state, unet_dir / WEIGHTS_NAME)
        if scheduler is not None:
            (folder / "scheduler").mkdir()
            _write_json(folder / "scheduler" / SCHEDULER_CONFIG_NAME, scheduler)
            _write_json(folder / MODEL_INDEX, {
                "_class_name": PIPELINES[scheduler["_class_name"]], "_diffusers_version": DIFFUSERS_VERSION,
                "scheduler": ["diffusers", scheduler["_class_name"]], "unet": ["diffusers", "UNet2DModel"]})

    _write_folder_atomically(path, write)
    return path


def unet_config(model: Module) -> dict[str, Any]:
    """The config.json of diffusers' UNet2DModel for a minidiff UNet: every key diffusers writes."""
    if not isinstance(model, UNet):
        raise TypeError(f"model: diffusers' UNet2DModel cannot express a {type(model).__name__}; save_diffusers "
                        "exports a minidiff UNet")
    if model.config["cross_attention_dim"] is not None:
        raise ValueError(f"cross_attention_dim={model.config['cross_attention_dim']}: diffusers' UNet2DModel has "
                         "no cross-attention (this UNet attends to a context); save_diffusers exports UNets without")
    values = {key: model.config[key] for key in SHARED_KEYS}
    return {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION, **UNET2D_DEFAULTS, **values}


def scheduler_config(sampler: Sampler) -> dict[str, Any]:
    """The scheduler_config.json of a DDPMSampler, DDIMSampler or DPMSolverMultistepSampler: its config (diffusers'
    keys already), with the schedule keys rewritten to describe its schedule exactly."""
    name = getattr(sampler, "diffusers_class", None)
    if not isinstance(sampler, Sampler) or name not in PIPELINES:
        raise ValueError(f"sampler: no diffusers pipeline for unconditional images runs a {type(sampler).__name__} "
                         f"as minidiff does; export with a DDPMSampler, DDIMSampler or DPMSolverMultistepSampler")
    return {"_class_name": name, "_diffusers_version": DIFFUSERS_VERSION,
            **{**sampler.config, **_schedule_keys(sampler)}}


def _schedule_keys(sampler: Sampler) -> dict[str, Any]:
    """The schedule keys of a config that rebuilds sampler.schedule exactly: the sampler's own, or a named
    diffusers schedule with minidiff's defaults for this T, or else the betas themselves (trained_betas)."""
    schedule, T = sampler.schedule, sampler.T
    base = {key: sampler.config[key] for key in SCHEDULE_KEYS if key in sampler.config}
    base.update(num_train_timesteps=T, trained_betas=None, rescale_betas_zero_snr=schedule.zero_terminal_snr)
    named = [{"beta_schedule": "squaredcos_cap_v2"}]
    for kind, default in (("linear", DDPM_BETA_RANGE), ("scaled_linear", LATENT_BETA_RANGE),
                          ("sigmoid", DDPM_BETA_RANGE)):
        try:
            start, end = short_chain_beta_range(*default, T)
        except ValueError:  # a T too short for the range (beta_end >= 1): minidiff has no such schedule either
            continue
        named.append({"beta_schedule": kind, "beta_start": start, "beta_end": end})
    for candidate in [{}, *named]:
        keys = {**base, **candidate}
        if np.array_equal(schedule_from_config(keys).betas, schedule.betas):
            return keys
    if schedule.zero_terminal_snr:
        raise ValueError("sampler: its zero-terminal-SNR schedule is not a named diffusers schedule; diffusers "
                         "cannot be given it (trained_betas are rescaled again, and beta_T = 1 is refused)")
    return {**base, "trained_betas": [float(b) for b in schedule.betas[1:]]}


def _check_destination(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the directory {path.parent} does not exist")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"path: {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"path: {path} exists and is not empty; pass overwrite=True to replace it")


def _write_folder_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """write(folder) into a new temporary folder beside `path`, then rename it to `path` (the old folder, if any,
    moved aside first and deleted last)."""
    token = secrets.token_hex(6)
    temporary, old = path.with_name(f".{path.name}.{token}.tmp"), path.with_name(f".{path.name}.{token}.old")
    temporary.mkdir()
    try:
        write(temporary)
        if path.exists():
            os.replace(path, old)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """JSON as diffusers writes it: sorted keys, two-space indent, a final newline; written atomically."""
    text = json.dumps(value, indent=2, sort_keys=True, default=_json_default) + "\n"
    _write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _json_default(value: Any) -> Any:
    """NumPy arrays and scalars as JSON lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to JSON")
