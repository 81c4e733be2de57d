"""Experiment configuration: dataclass schemas -> OmegaConf structured configs.

A run is described by one YAML file (which may name a ``base:`` YAML it extends, relative to
itself) plus ``key.path=value`` overrides from the command line. Everything is validated against
the schemas below before any work starts; every problem becomes one :class:`ConfigError` line that
names the key, the file it came from and what was expected.

    cfg = load_config("experiments/ablation/fit.yaml", ["trainer.max_steps=200"])
    cfg.model.preset            # -> "fit_mini"
    save_config(cfg, run_dir)   # writes run_dir/config.yaml (the merged config)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A bad experiment configuration; the message is one line meant for the user."""


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Which backbone to build: a named preset from ``models/presets.py`` (or a backbone kind of
    ``models/registry.py`` at its constructor defaults) plus keyword overrides."""

    preset: str = "fit_small"
    overrides: Dict[str, Any] = field(default_factory=dict)  # constructor kwargs replacing the preset's
    grad_checkpointing: bool = False  # recompute each block in backward (memory for time)
    compile: bool = False  # torch.compile the backbone only (never the LightningModule)
    # a stage-1 FIT checkpoint a fresh run starts from (models/init_from.py: init_from_stage1; the report goes to
    # the log and init_report.json in the run directory); a resumed run ignores it
    init_from: Optional[str] = None


@dataclass
class DiffusionConfig:
    """The diffusion framework (paper §2). ``framework="snap"`` is Table 1's Snap Video column;
    ``"edm"`` is EDM's own parameterisation (Table 3 row (i) uses it with sigma_in=1, sigma_data=0.5)."""

    framework: str = "snap"
    sigma_data: float = 1.0
    sigma_in: float = 4.0  # s*sqrt(T): 4 for 16 frames at the 64-px reference width
    image_sigma_in: Optional[float] = None  # Table 3 row (iv): a separate sigma_in for still images
    p_mean: float = -1.2  # ln(sigma) ~ N(p_mean, p_std^2) during training
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


@dataclass
class DataConfig:
    """Where clips come from and how they are shaped. ``root`` is a folder of videos (or the
    embedded moving-shapes set, generated on first use when it is one of its default folders, ``data/shapes`` or
    ``data/shapes_simple``, and missing)."""

    root: str = "data/shapes"
    manifest: Optional[str] = None  # CSV/JSONL with path, caption[, fps, split]; relative to root
    frames: int = 16
    size: List[int] = field(default_factory=lambda: [36, 64])  # (H, W) after resize + centre crop
    pad_to: List[int] = field(default_factory=lambda: [40, 64])  # (H, W) the backbone sees (paper §3.2)
    fps_choices: List[float] = field(default_factory=lambda: [6.0, 8.0, 12.0, 24.0])  # training frame rates
    val_fps: float = 8.0  # fixed validation frame rate (deterministic loader)
    image_fraction: float = 0.1  # share of still images in each training batch
    images_as_videos: bool = True  # paper §2.6: images are T-frame clips at "infinite" fps
    batch_size: int = 8  # per rank: the global batch is batch_size x devices x num_nodes (docs/multinode.md)
    val_batch_size: int = 8
    num_workers: int = 2
    # keep whole videos decoded in memory, up to this many MiB per loader process (0: decode every draw);
    # the same frames as decoding each draw, without the decode (results/profile/fit_step_parts.md)
    decoded_cache_mb: float = 0
    limit_val_clips: int = 64  # validation clips used for the fixed-sigma validation loss
    # an upsampler's input: each clip also comes at this (H, W), resized from the same decoded frames (batch
    # "low_res"); must be data.size / the upsampler's scale (the stage-1 clip size; null: no low-res video)
    low_res_size: Optional[List[int]] = None
    # the embedded moving-shapes set (generated when root is data/shapes or data/shapes_simple and missing)
    n_train: int = 4000
    n_val: int = 256
    seed: int = 0


@dataclass
class UpsamplerConfig:
    """Noise conditioning augmentation of an upsampler's low-resolution input (paper §3.3; Imagen): in training each
    example's low-res video gets Gaussian noise of a level drawn uniformly from [0, aug_sigma_max] (data space,
    [-1, 1] pixels), and that level is a conditioning token; validation and sampling use ``aug_sigma``."""

    aug_sigma_max: float = 0.5
    aug_sigma: float = 0.1  # the level at sampling time and in the validation loss (`sample --aug-sigma` overrides)
    # > 0: diffuse the residual (video - bicubic(low_res)) x residual_scale instead of the video, and add the bicubic
    # upsampling back after sampling (SRDiff's residual; the scale brings it to about sigma_data). 0: the video itself.
    # Why: docs/decisions.md "The upsampler's residual"
    residual_scale: float = 0.0


@dataclass
class TextConfig:
    """Frozen open_clip text tower. ``encoder`` is an open_clip model name (its text tower) or
    ``tiny`` (a small CPU-sized tower). Without ``checkpoint`` the tower is randomly initialised."""

    encoder: str = "tiny"
    checkpoint: Optional[str] = None
    max_length: int = 32  # tokens kept from open_clip's 77-token context
    cache_dir: str = ".cache/text_embeddings"
    label_dropout: float = 0.1  # classifier-free guidance: share of captions replaced by the null caption


@dataclass
class OptimConfig:
    """Optimiser and schedule (paper Tab. 9). ``name: auto`` (and ``lr``/``betas`` left null) takes the paper's
    choice for the backbone: AdamW (Table 9's "Adam" with decoupled weight decay), lr 1e-4, betas (0.9, 0.999) for the
    U-Net; timm's LAMB, lr 5e-3, betas (0.9, 0.99) for FIT. ``adam`` (torch's, weight decay as L2), ``adamw`` or
    ``lamb`` force one."""

    name: str = "auto"
    lr: Optional[float] = None
    betas: Optional[List[float]] = None
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_halflife_videos: float = 2000.0  # EDM-style EMA half-life, counted in videos seen
    ema_rampup_ratio: Optional[float] = 0.05  # EDM's ramp-up: half-life <= ratio * videos seen
    self_cond_prob: float = 0.9  # FIT latent self-conditioning rate (paper Tab. 8)
    max_nonfinite_steps: int = 5  # consecutive non-finite losses before the run stops
    # Adam/AdamW as one fused kernel over all tensors: the same update, 3-5x faster on the CPU (results/throughput.md)
    fused: bool = True


@dataclass
class TrainerConfig:
    """Lightning Trainer settings (anything Lightning scales with: devices, strategy, num_nodes)."""

    max_steps: int = 1000
    max_time: Optional[str] = None  # "DD:HH:MM:SS"; set it for the equal-wall-clock comparison
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"  # any Lightning strategy name; "fsdp": sharded (lit_snapvideo/sharding.py)
    num_nodes: int = 1
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU (bf16 is slow on CPU: docs/decisions.md)
    seed: int = 0
    deterministic: bool = False
    val_every_n_steps: int = 250
    checkpoint_every_n_steps: int = 0  # also write last.ckpt every N steps between validations; 0: off
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    # torch threads when training on the CPU; null: cores minus data workers (at least 1). Oversubscribed cores
    # make torch's OpenMP threads spin against each other: on 2 cores with 2 workers, 2 threads ran 5-12x slower.
    cpu_threads: Optional[int] = None
    # Lightning's profiler ("simple": seconds per hook, "advanced": cProfile per hook); report: <run>/fit-profile.txt
    profiler: Optional[str] = None


@dataclass
class LoggingConfig:
    """Run directory layout (``root/experiment/version``) and what the callbacks write."""

    root: str = "runs"
    experiment: Optional[str] = None  # default: the YAML file's name
    version: Optional[str] = None  # default: "version_0" (a rerun resumes it)
    sample_every_n_steps: int = 250
    sample_steps: int = 16
    sample_cfg: float = 2.0
    sample_prompts: List[str] = field(
        default_factory=lambda: [
            "a large red circle moving right on a black background",
            "a large blue square moving up on a white background",
            "a large yellow triangle moving left on a gray background",
            "a large green circle moving down on a black background",
        ]
    )
    sample_seed: int = 0
    sample_fps: Optional[float] = None  # frame-rate conditioning of samples; null: data.val_fps
    sample_orig_size: List[int] = field(default_factory=lambda: [108, 192])  # "original resolution" token (H, W)
    mfu_peak_tflops: Optional[float] = None  # hardware peak for MFU; null: a matmul probe measured at the start
    # quality during training (embedded moving-shapes set only): probe metrics on validation captions
    quality_every_n_steps: int = 0  # 0: off
    quality_num_videos: int = 8
    quality_steps: int = 16
    data_trace: bool = False  # data_trace.tsv in the run directory: what each training step saw


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

BASE_KEY = "base"  # an experiment YAML may name the YAML it extends


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:  # an empty file is more likely a mistake than a wish for every default
        raise ConfigError(
            f"{path}: the file is empty (expected sections such as model:, data:, trainer:; "
            "write '{}' for all defaults)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def _yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """[(file, mapping)] from the furthest base to ``path`` itself."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: '{BASE_KEY}:' chain loops back to itself")
    data = _read_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: key '{BASE_KEY}' must be a path to another YAML file")
    return _yaml_chain(path.parent / base, seen + (path,)) + [(path, data)]


def _section_keys(schema: DictConfig, dotted: str) -> list[str]:
    """Valid keys at the level where ``dotted`` failed, for the error message."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            break
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _expected_type(dotted: str) -> str:
    """The schema's declared type of ``dotted`` ("int", "List[int]", ...), or "" when it is not a schema field."""
    hints: dict = typing.get_type_hints(ExperimentConfig)
    kind: Any = None
    for part in dotted.split("."):
        if part not in hints:
            return ""
        kind = hints[part]
        hints = typing.get_type_hints(kind) if dataclasses.is_dataclass(kind) else {}
    return getattr(kind, "__name__", None) if isinstance(kind, type) else str(kind).replace("typing.", "")


def _explain(err: OmegaConfBaseException, source: str, schema: DictConfig) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        valid = ", ".join(_section_keys(schema, key))
        return ConfigError(f"{source}: unknown key '{key}'" + (f"; valid keys here: {valid}" if valid else ""))
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        expected = _expected_type(key)
        return ConfigError(f"{source}: bad value for '{key}': {msg}" + (f" (expected {expected})" if expected else ""))
    return ConfigError(f"{source}: '{key}': {str(err).splitlines()[0]}")


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"command line: override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Schema defaults <- base YAML(s) <- ``path`` <- ``key=value`` overrides, validated.

    Raises :class:`ConfigError` (one line: the key, the file, what was expected)."""
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = schema.copy()
    chain = _yaml_chain(Path(path)) if path is not None else []
    for file, data in chain:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise _explain(err, str(file), schema) from None
    for item in overrides:
        key, value = _parse_override(item)
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as err:
            err.full_key = getattr(err, "full_key", None) or key
            raise _explain(err, f"command line override {item}", schema) from None
    source = str(chain[-1][0]) if chain else "defaults"
    if path is not None and cfg.logging.experiment is None:
        cfg.logging.experiment = Path(path).stem
    validate(cfg, source, overrides)
    return cfg


def _related(a: str, b: str) -> bool:
    """Whether dotted keys ``a`` and ``b`` are the same key or one holds the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _blame(source: str, overrides: Sequence[str], *keys: str) -> str:
    """Where the value of ``keys`` came from: the last command-line override of each (``command line override
    key=value``), else ``source`` (the YAML file)."""
    last: dict[str, str] = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if any(_related(key, k) for k in keys):
            last.pop(key, None)
            last[key] = item
    if not last:
        return source
    return f"command line override{'s' if len(last) > 1 else ''} {' '.join(last.values())}"


def validate(cfg: DictConfig, source: str = "config", overrides: Sequence[str] = ()) -> None:
    """Value checks the type system cannot express. One ConfigError line for the first problem, naming the
    command-line override that set the bad value, or else ``source``."""

    def check(ok: bool, key: str, expected: str, value: Any) -> None:
        if not ok:
            where = _blame(source, overrides, key)
            raise ConfigError(f"{where}: bad value for '{key}': {value!r} (expected {expected})")

    d, t, o, dat, txt = cfg.diffusion, cfg.trainer, cfg.optim, cfg.data, cfg.text
    check(d.framework in ("snap", "edm"), "diffusion.framework", "'snap' or 'edm'", d.framework)
    for key in ("sigma_data", "sigma_in", "sigma_min", "sigma_max", "rho", "p_std"):
        check(d[key] > 0 and math.isfinite(d[key]), f"diffusion.{key}", "a finite number > 0", d[key])
    if d.image_sigma_in is not None:
        check(d.image_sigma_in > 0, "diffusion.image_sigma_in", "a number > 0 or null", d.image_sigma_in)
    check(d.sigma_min < d.sigma_max, "diffusion.sigma_min", f"< sigma_max ({d.sigma_max})", d.sigma_min)
    check(t.max_steps > 0, "trainer.max_steps", "an integer > 0", t.max_steps)
    check(t.val_every_n_steps > 0, "trainer.val_every_n_steps", "an integer > 0", t.val_every_n_steps)
    check(t.log_every_n_steps > 0, "trainer.log_every_n_steps", "an integer > 0", t.log_every_n_steps)
    check(
        t.checkpoint_every_n_steps >= 0,
        "trainer.checkpoint_every_n_steps",
        "an integer >= 0 (0: off)",
        t.checkpoint_every_n_steps,
    )
    check(t.num_nodes >= 1, "trainer.num_nodes", "an integer >= 1", t.num_nodes)
    check(t.profiler in (None, "simple", "advanced"), "trainer.profiler", "null, 'simple' or 'advanced'", t.profiler)
    check(
        not (t.strategy == "fsdp" and cfg.model.compile),
        "model.compile",
        "false with trainer.strategy=fsdp (torch.compile is applied before FSDP wraps the backbone)",
        cfg.model.compile,
    )
    check(
        t.precision in ("auto", "32", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "64-true"),
        "trainer.precision",
        "auto, 32-true, bf16-mixed, bf16-true, 16-mixed or 64-true",
        t.precision,
    )
    check(o.name in ("auto", "adam", "adamw", "lamb"), "optim.name", "auto, adam, adamw or lamb", o.name)
    check(o.lr is None or o.lr > 0, "optim.lr", "a number > 0 (or null: the paper's)", o.lr)
    check(
        o.betas is None or (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas)),
        "optim.betas",
        "two numbers in [0, 1) (or null: the paper's)",
        None if o.betas is None else list(o.betas),
    )
    check(o.weight_decay >= 0, "optim.weight_decay", "a number >= 0", o.weight_decay)
    check(o.warmup_steps >= 0, "optim.warmup_steps", "an integer >= 0", o.warmup_steps)
    check(o.schedule in ("cosine", "constant"), "optim.schedule", "cosine or constant", o.schedule)
    check(o.grad_clip >= 0, "optim.grad_clip", "a number >= 0 (0 disables)", o.grad_clip)
    check(o.ema_halflife_videos > 0, "optim.ema_halflife_videos", "a number > 0", o.ema_halflife_videos)
    check(0 <= o.self_cond_prob <= 1, "optim.self_cond_prob", "a probability in [0, 1]", o.self_cond_prob)
    check(o.max_nonfinite_steps >= 1, "optim.max_nonfinite_steps", "an integer >= 1", o.max_nonfinite_steps)
    check(dat.frames >= 1, "data.frames", "an integer >= 1", dat.frames)
    check(len(dat.size) == 2 and min(dat.size) > 0, "data.size", "[H, W] with H, W > 0", list(dat.size))
    check(
        len(dat.pad_to) == 2 and dat.pad_to[0] >= dat.size[0] and dat.pad_to[1] >= dat.size[1],
        "data.pad_to",
        f"[H, W] at least data.size {list(dat.size)}",
        list(dat.pad_to),
    )
    check(
        len(dat.fps_choices) > 0 and min(dat.fps_choices) > 0,
        "data.fps_choices",
        "a non-empty list of fps > 0",
        list(dat.fps_choices),
    )
    check(0 <= dat.image_fraction <= 1, "data.image_fraction", "a fraction in [0, 1]", dat.image_fraction)
    check(dat.batch_size >= 1, "data.batch_size", "an integer >= 1", dat.batch_size)
    check(dat.num_workers >= 0, "data.num_workers", "an integer >= 0", dat.num_workers)
    check(dat.decoded_cache_mb >= 0, "data.decoded_cache_mb", "a number of MiB >= 0 (0: off)", dat.decoded_cache_mb)
    check(0 <= txt.label_dropout <= 1, "text.label_dropout", "a probability in [0, 1]", txt.label_dropout)
    check(txt.max_length >= 1, "text.max_length", "an integer >= 1", txt.max_length)
    check(cfg.logging.sample_steps >= 1, "logging.sample_steps", "an integer >= 1", cfg.logging.sample_steps)
    up = cfg.upsampler
    check(up.aug_sigma_max >= 0, "upsampler.aug_sigma_max", "a noise level >= 0", up.aug_sigma_max)
    check(up.aug_sigma >= 0, "upsampler.aug_sigma", "a noise level >= 0", up.aug_sigma)
    check(up.residual_scale >= 0, "upsampler.residual_scale", "0 (off) or a scale > 0", up.residual_scale)
    if cfg.model.init_from is not None:
        check(Path(cfg.model.init_from).is_file(), "model.init_from", "a stage-1 checkpoint file", cfg.model.init_from)
    for key in ("logging.experiment", "logging.version"):  # run folder = logging.root / experiment / version
        name = OmegaConf.select(cfg, key)
        inside = name is None or not (Path(name).is_absolute() or ".." in Path(name).parts)
        check(inside, key, "a name inside logging.root: not absolute, no '..'", name)
    for prompt in cfg.logging.sample_prompts:
        check(not has_line_break(prompt), "logging.sample_prompts", "prompts without line breaks", prompt)
    for key in ("logging.root", "text.cache_dir"):
        folder = OmegaConf.select(cfg, key)
        blocker = file_in_the_way(folder)
        check(blocker is None, key, f"a folder; {blocker} is a file", folder)
    problem = upsampler_problem(cfg) or backbone_problem(
        cfg.model.preset,
        json.dumps(OmegaConf.to_container(cfg.model.overrides, resolve=True), sort_keys=True),
        cfg.data.frames,
        *cfg.data.pad_to,
    )
    if problem:
        named = re.match(r"bad value for '([\w.]+)'", problem)  # the preset or its overrides alone, else the clip too
        keys = (named[1],) if named else ("model.preset", "model.overrides", "data.frames", "data.pad_to")
        where = _blame(source, overrides, *keys)
        raise ConfigError(f"{where}: {problem}")


def upsampler_problem(cfg: DictConfig) -> Optional[str]:
    """Why the clip sizes do not fit the backbone's low-resolution input (an upsampler's ``scale``), or None: an
    upsampler needs data.size == data.pad_to == scale x data.low_res_size; other backbones take no low-res video."""
    from .models.presets import preset_kwargs
    from .models.registry import backbone

    try:
        kind, arguments = preset_kwargs(cfg.model.preset, OmegaConf.to_container(cfg.model.overrides, resolve=True))
    except ValueError:
        return None  # backbone_problem names it
    d, low = cfg.data, cfg.data.low_res_size
    if not backbone(kind).upsampler:
        if low is not None:
            return f"bad value for 'data.low_res_size': {list(low)} (expected null: model.preset={cfg.model.preset} is not an upsampler)"
        return None
    scale = arguments["scale"]
    expected = [s // scale for s in d.size]
    if list(d.size) != list(d.pad_to) or any(s % scale for s in d.size) or low is None or list(low) != expected:
        return (
            f"bad value for 'data.low_res_size': {None if low is None else list(low)} (model.preset={cfg.model.preset} "
            f"upsamples x{scale}: expected data.low_res_size = data.size / {scale} = {expected}, with data.size "
            f"{list(d.size)} divisible by {scale} and data.pad_to equal to it, got {list(d.pad_to)})"
        )
    if cfg.logging.quality_every_n_steps > 0:
        return (
            "bad value for 'logging.quality_every_n_steps': the probe metrics score text-to-video samples; "
            "set 0 for an upsampler (its measure: lit-snapvideo upsampler-eval)"
        )
    return None


def has_line_break(text: str) -> bool:
    """Whether ``text`` holds a line break (any that str.splitlines splits at): prompts.txt keeps one prompt per line,
    as --prompts-file reads it back."""
    return "".join(text.splitlines()) != text


def file_in_the_way(folder: str | os.PathLike) -> Optional[Path]:
    """The first existing part of ``folder`` that is a file (so the folder cannot be made), or None."""
    for part in [Path(folder), *Path(folder).parents]:
        if part.exists():
            return None if part.is_dir() else part
    return None


@functools.lru_cache(maxsize=64)
def backbone_problem(preset: str, overrides_json: str, frames: int, height: int, width: int) -> Optional[str]:
    """Why the backbone cannot be built or cannot take a (frames, height, width) clip, or None: it is built on the
    meta device (nothing allocated) and runs one forward pass there, so every divisibility rule of the model applies."""
    import torch

    from .models.presets import PRESETS, build_backbone, example_inputs
    from .models.registry import BACKBONES

    overrides = json.loads(overrides_json)
    try:
        model = build_backbone(preset, text_dim=8, overrides=overrides, device="meta")  # any text width will do
    except (TypeError, ValueError) as err:
        key = "model.overrides" if preset in PRESETS or preset in BACKBONES else "model.preset"
        return f"bad value for '{key}': {str(err).splitlines()[0]}"
    x, c_noise, cond = example_inputs(1, frames, (height, width), text_len=1, text_dim=8, device="meta", model=model)
    try:
        with torch.no_grad():
            model(x, c_noise, cond)
    except (RuntimeError, ValueError) as err:
        return (
            f"the clip data.frames x data.pad_to = {frames} x [{height}, {width}] does not fit model.preset="
            f"{preset}: {str(err).splitlines()[0]}"
        )
    return None


def save_config(cfg: DictConfig, run_dir: str | os.PathLike) -> Path:
    """Write the merged config to ``run_dir/config.yaml`` (runs describe themselves)."""
    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out)
    return out


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
