"""The embedded moving-shapes set's own quality metrics, computed offline with a probe network.

The moving-shapes captions name the ground truth (shape, colour, direction), so a small video classifier
(:class:`Probe`) trained on the real clips can tell whether a generated clip shows what its prompt asked for:

* :func:`prompt_accuracy`: the share of generated clips whose predicted shape, colour and direction all match
  the prompt (and each attribute on its own). A still-image prompt has no direction: only shape and colour count.
* :func:`probe_fvd`: the Fréchet distance between the probe's penultimate features (64-d) of generated clips
  and of the real validation clips. Like FVD, it is biased upwards for small sets: compare values only at
  equal numbers of clips.
* :func:`temporal_consistency`: ``1 - mean |x_{t+1} - x_t| / 2`` over pixels and consecutive frame pairs, for
  videos in [-1, 1]; 1 is a frozen video, flicker and noise lower it. The real validation clips' value is
  stored with the probe (``probe.meta["reference"]["temporal_consistency"]``) as the target to compare with.

**These numbers do not compare with published FVD, FID or CLIPSIM.** The probe is a small network trained on
this synthetic set only; its features are not I3D's or Inception's, and its scale is its own. They compare
runs of this kit against each other on the same data set and probe.

Only one-object clips are used: with two objects, which one a single-label probe should name is undefined, so
:func:`prompt_accuracy` skips two-object prompts (and says how many it scored). The probe is cached under
``cache_dir/<hash>.pt``, keyed by the data set's records, the clip shape and every training setting, with its
measured validation accuracy, its training time and the real reference statistics; an entry is checked when read
(one trained for another clip shape, or damaged, is trained again).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import ClipDataset, Record, SkipLog, load_records
from ..data.shapes import COLORS, DIRECTIONS, SHAPES, parse_caption
from ..data.video import crop_padding
from ..errors import one_line
from ..safe_load import CheckpointError, load_checkpoint_file, nonfinite_tensors, read_cache_entry, save_atomic
from .frechet import GaussianStats, feature_stats, frechet_distance_from_stats

log = logging.getLogger(__name__)

PROBE_VERSION = 1  # bump when the architecture or the training recipe changes: old caches are then ignored
ATTRIBUTES = {"shape": list(SHAPES), "color": list(COLORS), "direction": list(DIRECTIONS)}
IGNORE = -100  # label of an attribute that does not apply (a still image has no direction)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _block3d(cin: int, cout: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


def _block2d(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class Probe(nn.Module):
    """Small two-path video classifier: ``(B, 3, frames, *size)`` in [-1, 1] -> one logit head per attribute.

    * motion path: four strided 3x3x3 conv blocks over every second frame (8x36x64 -> 1x3x4), for direction;
    * appearance path: four 3x3 conv blocks at full resolution on 4 frames (t = 0, 5, 10, 15), for shape and
      colour (a 4-pixel shape needs the full 36x64 frame; the strided 3D path alone learned colour and direction
      but stayed near chance on shape);
    * each path is max-pooled over space (and time), because the object covers ~2 % of the frame and an average
      would be the background's; the concatenation goes through a 64-d feature layer (the probe-FVD features),
      then linear heads for shape (3), colour (8) and direction (8).

    ``meta`` holds what training measured (accuracy, time) and the real reference statistics."""

    def __init__(self, frames: int = 16, size: Sequence[int] = (36, 64), width: int = 16, feature_dim: int = 64):
        super().__init__()
        self.frames, self.size = frames, tuple(size)
        self.config = {"frames": frames, "size": list(size), "width": width, "feature_dim": feature_dim}
        w = width
        self.motion = nn.Sequential(
            _block3d(3, w, (1, 2, 2)), _block3d(w, 2 * w, 2), _block3d(2 * w, 3 * w, 2), _block3d(3 * w, 4 * w, 2)
        )
        self.appearance = nn.Sequential(
            _block2d(3, w, 1), _block2d(w, 2 * w, 2), _block2d(2 * w, 3 * w, 2), _block2d(3 * w, 4 * w, 1)
        )
        self.appearance_frames = torch.linspace(0, frames - 1, 4).round().long().unique().tolist()
        self.feature = nn.Sequential(nn.Linear(8 * w, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(v)) for name, v in ATTRIBUTES.items()})
        self.meta: dict = {}

    def prepare(self, videos: torch.Tensor) -> torch.Tensor:
        """Crop the backbone's padding (e.g. 40x64 -> 36x64, centred as ``pad_video`` adds it) and keep the first
        ``frames`` frames. Raises ValueError for clips that are too short or too small."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"probe: expected videos of shape (B, 3, T, H, W), got {tuple(videos.shape)}")
        h, w = videos.shape[-2:]
        if videos.shape[2] < self.frames or h < self.size[0] or w < self.size[1]:
            raise ValueError(
                f"probe: needs at least {self.frames} frames of {self.size[0]}x{self.size[1]}, "
                f"got {videos.shape[2]} frames of {h}x{w}"
            )
        return crop_padding(videos[:, :, : self.frames], self.size).float()

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> ``(B, feature_dim)`` penultimate features."""
        x = self.prepare(videos)
        motion = self.motion(x[:, :, ::2]).amax(dim=(2, 3, 4))
        frames = rearrange(x[:, :, self.appearance_frames], "b c t h w -> (b t) c h w")
        appearance = rearrange(self.appearance(frames).amax(dim=(2, 3)), "(b t) c -> b t c", b=x.shape[0]).mean(1)
        return self.feature(torch.cat([motion, appearance], dim=1))

    def forward(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, T, H, W)`` -> ``{attribute: (B, num_classes) logits}``."""
        feats = self.features(videos)
        return {name: head(feats) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, videos: torch.Tensor, batch_size: int = 32) -> dict[str, list[str]]:
        """Predicted attribute names per clip (eval mode, batched)."""
        self.eval()
        out: dict[str, list[str]] = {name: [] for name in ATTRIBUTES}
        for chunk in videos.split(batch_size):
            for name, logits in self(chunk).items():
                out[name] += [ATTRIBUTES[name][i] for i in logits.argmax(-1).tolist()]
        return out


# --------------------------------------------------------------------------------------------
# Labels and data
# --------------------------------------------------------------------------------------------


def caption_labels(caption: str) -> Optional[dict[str, int]]:
    """Class indices of a one-object caption (direction IGNORE for a still) and ``bounce`` (0/1); None for
    two objects."""
    attrs = parse_caption(caption)
    if len(attrs["objects"]) != 1:
        return None
    labels = {name: ATTRIBUTES[name].index(attrs[name]) for name in ("shape", "color")}
    labels["direction"] = IGNORE if attrs["direction"] is None else ATTRIBUTES["direction"].index(attrs["direction"])
    labels["bounce"] = int(attrs["bounce"])
    return labels


def _one_object(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if caption_labels(r.caption) is not None]


@torch.no_grad()
def _decode(
    records: Sequence[Record],
    frames: int,
    size: Sequence[int],
    fps_choices: Sequence[float],
    train: bool,
    skip_dir: Path,
    num_workers: int,
    seed: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decode every record once (through the data pipeline's ClipDataset, no padding) into uint8 clips
    ``(N, 3, frames, *size)`` plus label tensors ``{attribute: (N,)}``. ``train`` draws a random frame rate
    among ``fps_choices`` and a random start per clip (seeded); otherwise the first fps and frame 0."""
    dataset = ClipDataset(records, frames, size, size, fps_choices, train=train, skip_log=SkipLog(skip_dir))
    loader = DataLoader(dataset, batch_size=32, num_workers=num_workers)  # workers are seeded from the forked RNG
    videos, captions = [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for batch in loader:
            videos.append(((batch["video"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
            captions += batch["caption"]
    labels = [caption_labels(c) for c in captions]
    keep = [i for i, lab in enumerate(labels) if lab is not None]  # a bad file's stand-in may have two objects
    labels = [labels[i] for i in keep]
    return torch.cat(videos)[keep], {name: torch.tensor([lab[name] for lab in labels]) for name in labels[0]}


def _as_float(clips: torch.Tensor) -> torch.Tensor:
    return clips.float() / 127.5 - 1


def data_fingerprint(root: str | os.PathLike, manifest: Optional[str] = None) -> str:
    """Hash of the data set's records (paths relative to ``root``, captions, splits): its identity in cache keys."""
    train, val = load_records(root, manifest)
    base = Path(root).resolve()
    base = base.parent if base.is_file() else base
    rows = [
        (os.path.relpath(r.path, base), r.caption, split) for split, rs in (("train", train), ("val", val)) for r in rs
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Training, evaluation and the cache
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def attribute_accuracy(probe: Probe, clips: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy on uint8 clips (IGNORE labels left out), plus ``all``: every applicable one right."""
    probe.eval()
    logits = {name: [] for name in ATTRIBUTES}
    for chunk in clips.split(64):
        for name, value in probe(_as_float(chunk)).items():
            logits[name].append(value)
    correct_all = torch.ones(len(clips), dtype=torch.bool)
    acc = {}
    for name in ATTRIBUTES:
        pred, target = torch.cat(logits[name]).argmax(-1), labels[name]
        valid = target != IGNORE
        right = (pred == target) | ~valid
        acc[name] = float(right[valid].float().mean()) if valid.any() else float("nan")
        correct_all &= right
    acc["all"] = float(correct_all.float().mean())
    return acc


def train_probe(
    root: str | os.PathLike,
    manifest: Optional[str] = None,
    *,
    frames: int = 16,
    size: Sequence[int] = (36, 64),
    fps_choices: Sequence[float] = (6.0, 8.0, 12.0, 24.0),
    val_fps: float = 8.0,
    max_train: int = 2000,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    num_workers: int = 2,
    work_dir: str | os.PathLike = ".cache/probe",
) -> Probe:
    """Train a :class:`Probe` on the one-object training clips of the data set at ``root`` (at most
    ``max_train``; each decoded once at a random training frame rate and start; ``steps`` AdamW steps on random
    batches with mirror and time-reversal augmentation) and measure it on the one-object
    validation clips (decoded at ``val_fps`` from frame 0). Fills ``probe.meta``: ``val_accuracy``
    (shape/color/direction/all), ``train_seconds``, counts, and ``reference`` (real validation feature
    statistics and temporal consistency)."""
    started = time.perf_counter()
    train_records, val_records = load_records(root, manifest)
    train_records, val_records = _one_object(train_records), _one_object(val_records)
    if len(train_records) < batch_size or len(val_records) < 2:
        raise ValueError(
            f"probe: {root} has {len(train_records)} one-object training and {len(val_records)} validation "
            f"clips; needs at least {batch_size} and 2 (is it a moving-shapes data set?)"
        )
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(train_records), generator=g)[:max_train].tolist()
    skip_dir = Path(work_dir) / "skipped"
    train_clips, train_labels = _decode(
        [train_records[i] for i in picked], frames, size, fps_choices, True, skip_dir, num_workers, seed
    )
    val_clips, val_labels = _decode(val_records, frames, size, [val_fps], False, skip_dir, num_workers, seed)
    decode_seconds = time.perf_counter() - started

    torch.manual_seed(seed)
    probe = Probe(frames, size)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    probe.train()
    for step in range(steps):
        idx = torch.randint(len(train_clips), (batch_size,), generator=g)
        clips, targets = augment(_as_float(train_clips[idx]), {n: v[idx] for n, v in train_labels.items()}, g)
        logits = probe(clips)
        loss = sum(F.cross_entropy(logits[n], targets[n], ignore_index=IGNORE) for n in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            log.info("probe step %d/%d: loss %.3f", step + 1, steps, loss.item())
    probe.eval()
    val_float = _as_float(val_clips)
    with torch.no_grad():
        reference_stats = feature_stats(torch.cat([probe.features(c) for c in val_float.split(64)]))
    probe.meta = {
        "val_accuracy": attribute_accuracy(probe, val_clips, val_labels),
        "train_accuracy": attribute_accuracy(probe, train_clips[:512], {n: v[:512] for n, v in train_labels.items()}),
        "train_seconds": time.perf_counter() - started,
        "decode_seconds": decode_seconds,
        "num_train": len(train_clips),
        "num_val": len(val_clips),
        "steps": steps,
        "reference": {
            "mu": reference_stats.mu,
            "sigma": reference_stats.sigma,
            "num": reference_stats.num,
            "temporal_consistency": temporal_consistency(val_float),
        },
    }
    log.info("probe: validation accuracy %s after %.0f s", probe.meta["val_accuracy"], probe.meta["train_seconds"])
    return probe


def _direction_map(rule: dict[str, str]) -> torch.Tensor:
    return torch.tensor([ATTRIBUTES["direction"].index(rule[d]) for d in ATTRIBUTES["direction"]])


_REVERSED = _direction_map(
    {
        "left": "right",
        "right": "left",
        "up": "down",
        "down": "up",
        "up-left": "down-right",
        "down-right": "up-left",
        "up-right": "down-left",
        "down-left": "up-right",
    }
)
_MIRRORED = _direction_map(
    {
        "left": "right",
        "right": "left",
        "up": "up",
        "down": "down",
        "up-left": "up-right",
        "up-right": "up-left",
        "down-left": "down-right",
        "down-right": "down-left",
    }
)


def _remap(direction: torch.Tensor, table: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Direction labels mapped through ``table`` where ``where`` holds (IGNORE stays IGNORE)."""
    return torch.where(where & (direction != IGNORE), table[direction.clamp(min=0)], direction)


def augment(clips: torch.Tensor, labels: dict[str, torch.Tensor], g: torch.Generator):
    """Label-preserving augmentation of ``(B, 3, T, H, W)`` clips, each applied to a random half:
    a left-right mirror (shapes are mirror-symmetric; the direction mirrors) and, for clips that do not bounce,
    a time reversal (the direction reverses; a reversed bounce would bounce the other way round)."""
    clips, direction = clips.clone(), labels["direction"]
    mirror = torch.rand(len(clips), generator=g) < 0.5
    reverse = (torch.rand(len(clips), generator=g) < 0.5) & (labels["bounce"] == 0)
    clips[mirror] = clips[mirror].flip(-1)
    clips[reverse] = clips[reverse].flip(2)
    direction = _remap(_remap(direction, _MIRRORED, mirror), _REVERSED, reverse)
    return clips, {**labels, "direction": direction}


def save_probe(probe: Probe, path: str | os.PathLike) -> None:
    entry = {"version": PROBE_VERSION, "config": probe.config, "state_dict": probe.state_dict(), "meta": probe.meta}
    save_atomic(entry, path)


def _probe_from(saved: dict) -> Probe:
    probe = Probe(**saved["config"])
    probe.load_state_dict(saved["state_dict"])
    probe.meta = saved["meta"]
    return probe.eval()


def load_probe(path: str | os.PathLike) -> Probe:
    """A probe saved by :func:`save_probe`; ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: probe checkpoint not found")

    try:  # weights only: a cache file is a pickle too, and one planted there must not run code
        return _probe_from(load_checkpoint_file(path, "cpu", hint="delete it and the probe is trained again"))
    except CheckpointError:
        raise
    except Exception as err:
        raise ValueError(
            f"{path}: not a probe checkpoint written by save_probe ({type(err).__name__}: {err})"
        ) from None


def _cached_probe_problem(entry: object, frames: int, size: Sequence[int]) -> Optional[str]:
    """Why a loaded probe cache entry cannot be used (None: it can): a probe of this version trained on clips of
    ``frames`` x ``size``, with finite weights and finite real reference statistics."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), dict) for k in ("config", "state_dict", "meta")):
        return "not a probe written by save_probe"
    if entry.get("version") != PROBE_VERSION:
        return f"probe version {entry.get('version')!r}, expected {PROBE_VERSION}"
    config = entry["config"]
    if config.get("frames") != frames or list(config.get("size") or ()) != list(size):
        return (
            f"trained on clips of {config.get('frames')} frames of {config.get('size')}, "
            f"expected {frames} frames of {list(size)}"
        )
    ref = entry["meta"].get("reference")
    if not isinstance(ref, dict) or not all(isinstance(ref.get(k), torch.Tensor) for k in ("mu", "sigma")):
        return "no real reference statistics"
    if nonfinite_tensors(entry["state_dict"]) or nonfinite_tensors(ref):
        return "NaN or inf in its weights or reference statistics"
    try:
        _probe_from(entry)
    except Exception as err:
        return f"its weights do not fit the probe ({one_line(err)})"
    return None


# the clip shape and frame rate a probe is trained and measured at: always in its cache key, given or defaulted
CLIP_DEFAULTS = {k: inspect.signature(train_probe).parameters[k].default for k in ("frames", "size", "val_fps")}


def load_or_train_probe(
    root: str | os.PathLike,
    manifest: Optional[str] = None,
    cache_dir: str | os.PathLike = ".cache/probe",
    **train_kwargs,
) -> Probe:
    """The probe for the data set at ``root``: read from ``cache_dir/<hash>.pt`` when the data set (its
    records), the clip shape and every training setting match, trained with :func:`train_probe` and cached
    otherwise. A cache entry that does not load or validate is one warning naming it, then trained again."""
    settings = dict(CLIP_DEFAULTS)
    settings.update((k, v) for k, v in train_kwargs.items() if k != "num_workers")  # workers do not change it
    key = {"version": PROBE_VERSION, "data": data_fingerprint(root, manifest), **settings}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{digest}.pt"
    saved = read_cache_entry(
        path,
        lambda entry: _cached_probe_problem(entry, settings["frames"], settings["size"]),
        "probe cache",
        "training the probe again",
    )
    if saved is not None:
        return _probe_from(saved)
    probe = train_probe(root, manifest, work_dir=cache_dir, **train_kwargs)
    save_probe(probe, path)
    return probe


# --------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------


def prompt_accuracy(probe: Probe, videos: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """How often generated clips show what their prompts ask for, by the probe.

    ``videos`` ``(B, 3, T, H, W)`` in [-1, 1] (padding is cropped); ``prompts`` moving-shapes captions.
    Returns ``prompt_accuracy`` (every attribute the prompt names is right; a still prompt names no direction),
    ``shape_accuracy``, ``color_accuracy``, ``direction_accuracy`` (over prompts with a direction; NaN when none)
    and ``num_scored`` (two-object prompts are skipped). Raises ValueError for a caption outside the vocabulary."""
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"prompt_accuracy: {videos.shape[0]} videos but {len(prompts)} prompts")
    labels = [caption_labels(p) for p in prompts]
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if not keep:
        raise ValueError("prompt_accuracy: no one-object prompts to score")
    targets = {name: torch.tensor([labels[i][name] for i in keep]) for name in ATTRIBUTES}
    # quantised like the decoded real clips the probe was measured on
    uint8 = ((probe.prepare(videos[keep]).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    acc = attribute_accuracy(probe, uint8, targets)
    return {"prompt_accuracy": acc["all"], **{f"{n}_accuracy": acc[n] for n in ATTRIBUTES}, "num_scored": len(keep)}


@torch.no_grad()
def probe_fvd(probe: Probe, videos: torch.Tensor, real: Optional[GaussianStats] = None) -> float:
    """Fréchet distance between the probe features of ``videos`` ``(B, 3, T, H, W)`` in [-1, 1] and ``real``
    (default: the real validation clips' statistics stored with the probe). Not comparable with published FVD."""
    probe.eval()
    if real is None:
        ref = probe.meta["reference"]
        real = GaussianStats(ref["mu"], ref["sigma"], ref["num"])
    feats = torch.cat([probe.features(chunk) for chunk in videos.split(64)])
    return frechet_distance_from_stats(feature_stats(feats), real)


def temporal_consistency(videos: torch.Tensor) -> float:
    """``1 - mean |x_{t+1} - x_t| / 2`` for ``(B, 3, T, H, W)`` in [-1, 1]: 1 for frozen clips, lower with
    motion, flicker or noise. Compare with the real clips' value (``probe.meta["reference"]``)."""
    if videos.ndim != 5 or videos.shape[2] < 2:
        raise ValueError(f"temporal_consistency: expected (B, 3, T>=2, H, W) videos, got {tuple(videos.shape)}")
    return float(1 - (videos[:, :, 1:] - videos[:, :, :-1]).abs().mean() / 2)


def probe_for(cfg: Any, cache_dir: str = ".cache/probe", **train_kwargs: Any) -> Probe:
    """The (cached) probe for a run's data set (``cfg``: its experiment config), at the run's clip shape and
    validation frame rate."""
    return load_or_train_probe(
        cfg.data.root,
        cfg.data.manifest,
        cache_dir=cache_dir,
        frames=cfg.data.frames,
        size=list(cfg.data.size),
        val_fps=cfg.data.val_fps,
        **train_kwargs,
    )


def probe_metrics(probe: Probe, videos: torch.Tensor, prompts: Sequence[str]) -> dict:
    """Every probe metric of ``videos`` (N, 3, T, H, W) sampled for ``prompts``, as ``probe/<name>`` keys."""
    metrics = {f"probe/{k}": v for k, v in prompt_accuracy(probe, videos, prompts).items()}
    metrics["probe/fvd"] = probe_fvd(probe, videos)
    metrics["probe/temporal_consistency"] = temporal_consistency(videos)
    metrics["probe/real_temporal_consistency"] = probe.meta["reference"]["temporal_consistency"]
    return metrics
