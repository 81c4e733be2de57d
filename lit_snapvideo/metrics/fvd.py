"""Fréchet Video Distance following stylegan-v's ``fvd2048_16f`` protocol, with a user-supplied I3D file.

Protocol (checked against universome/stylegan-v ``src/metrics/frechet_video_distance.py`` and
``metric_utils.py``):

* detector: the TorchScript I3D ``i3d_torchscript.pt`` (Kinetics-400, a port of the tf.hub model of the original
  FVD code), loaded with ``torch.jit.load`` from a path the user gives; nothing here downloads it;
* input: ``(B, 3, T, H, W)`` **uint8** videos, converted from [-1, 1] as ``(x * 127.5 + 128).clamp(0, 255)``;
* call: ``detector(videos, rescale=True, resize=True, return_features=True)``: the detector itself rescales to
  [-1, 1] and resizes every frame to 224x224, and returns the 400-d pre-softmax logits as features;
* 16 consecutive frames per video (the first 16 here), 2048 real and 2048 generated videos;
* Gaussian statistics with the covariance divided by N, then the Fréchet distance (:mod:`.frechet`).

The metric is named after its protocol, ``fvd{num_videos}_{frames}f``: a run on fewer videos is named for the
number it used, so a 256-video FVD is never reported as ``fvd2048_16f``. Real statistics are cached on disk,
keyed by the data's identity (given by the caller: data set, split, count, clip shape, frame rate), the protocol
(number of videos, frames) and the detector file's hash, and validated when read (a damaged one is recomputed).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from ..errors import UserError, one_line
from ..safe_load import read_cache_entry, save_atomic
from .frechet import GaussianStats, feature_stats, frechet_distance_from_stats

# stylegan-v's detector_kwargs for FVD (frechet_video_distance.compute_fvd)
I3D_KWARGS = dict(rescale=True, resize=True, return_features=True)

VideoSource = Union[torch.Tensor, Iterable]  # (N,3,T,H,W) tensor, or batches of them / dicts with a "video" key


class DetectorError(UserError, ValueError):
    """A detector file that does not give what its metric needs (its call fails, the wrong output shape, NaN or
    inf features): one line naming the file."""


def check_features(feats: object, batch: int, path: str | os.PathLike) -> torch.Tensor:
    """``feats`` as the ``(batch, D)`` finite tensor a detector must give; DetectorError naming ``path`` otherwise.
    Checked before any linear algebra: NaN features made oneMKL fail inside FID (and segfault on some builds)."""
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != batch:
        got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise DetectorError(f"{path}: expected features of shape ({batch}, D) from the detector, got {got}")
    if not feats.is_floating_point() or not bool(feats.isfinite().all()):
        bad = int((~feats.isfinite()).any(1).sum()) if feats.is_floating_point() else batch
        raise DetectorError(f"{path}: the detector gave NaN or inf features for {bad} of {batch} inputs")
    return feats


def load_torchscript(path: str | os.PathLike, what: str, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` with errors that name the file and what was expected (``what``, e.g. "the I3D detector")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: {what} file not found (expected a TorchScript module saved with torch.jit.save)"
        )
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but the published detectors are TorchScript files
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # torch raises RuntimeError/ValueError/pickle errors depending on the file
        raise ValueError(
            f"{path}: not a TorchScript module ({what}; expected a file saved with torch.jit.save): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    return module.eval()


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """First ``length`` hex digits of the file's SHA-256 (identifies a detector in cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 in [0, 255], rounding as stylegan-v does (``x * 127.5 + 128``, truncated)."""
    return (videos * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def iter_video_batches(source: VideoSource, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield ``(b, 3, T, H, W)`` tensors from a tensor, an iterable of tensors, or dict batches (``batch["video"]``)."""
    if isinstance(source, torch.Tensor):
        yield from source.split(batch_size)
        return
    for batch in source:
        yield batch["video"] if isinstance(batch, dict) else batch


def stats_digest(mu: torch.Tensor, sigma: torch.Tensor) -> str:
    """SHA-256 of the statistics' bytes, stored with them: a cache file edited after it was written is caught."""
    return hashlib.sha256(mu.contiguous().numpy().tobytes() + sigma.contiguous().numpy().tobytes()).hexdigest()


def real_stats_key(data_id: str, split: str, num_videos: int, frames: int, size: Sequence[int], fps: float) -> str:
    """The cache identity of real clips: the data set, split and count, and the shape and frame rate they were
    decoded at, so statistics of another clip shape or rate are never reused."""
    return f"{data_id}-{split}{num_videos}-{frames}x{size[0]}x{size[1]}-{fps:g}fps"


class FVD:
    """FVD with stylegan-v's protocol and a user-supplied TorchScript I3D.

        fvd = FVD("i3d_torchscript.pt", cache_dir=".cache/fvd")              # fvd2048_16f
        real = fvd.real_stats(val_loader, key="shapes-val-36x64")           # cached after the first call
        fvd.score([fake_seed0, fake_seed1], real)   # {"fvd2048_16f": mean, "fvd2048_16f_std": std, ...}

    Videos are ``(N, 3, T, H, W)`` floats in [-1, 1] with ``T >= frames``; the first ``frames`` frames are used.
    ``num_videos`` real and ``num_videos`` generated videos are used (more are ignored, fewer is an error: pass a
    smaller ``num_videos`` so the metric's name says what was measured).
    """

    def __init__(
        self,
        detector_path: str | os.PathLike,
        cache_dir: str | os.PathLike = ".cache/fvd",
        num_videos: int = 2048,
        frames: int = 16,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
    ):
        self.detector_path = Path(detector_path)
        self.detector = load_torchscript(detector_path, "the I3D detector (stylegan-v's i3d_torchscript.pt)", device)
        self.detector_hash = file_hash(detector_path)
        self.cache_dir = Path(cache_dir)
        self.num_videos, self.frames, self.batch_size, self.device = num_videos, frames, batch_size, device
        self.name = f"fvd{num_videos}_{frames}f"

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, D)`` float64 detector features (D = 400 for the I3D)."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"{self.name}: expected videos of shape (B, 3, T, H, W), got {tuple(videos.shape)}")
        if videos.shape[2] < self.frames:
            raise ValueError(f"{self.name}: needs at least {self.frames} frames per video, got {videos.shape[2]}")
        clips = to_uint8(videos[:, :, : self.frames]).to(self.device)
        try:
            feats = self.detector(clips, **I3D_KWARGS)
        except Exception as err:
            raise DetectorError(
                f"{self.detector_path}: the detector failed on a uint8 batch {tuple(clips.shape)} called "
                f"with {I3D_KWARGS} (stylegan-v's I3D signature): {one_line(err)}"
            ) from None
        return check_features(feats, clips.shape[0], self.detector_path).double().cpu()

    def stats(self, source: VideoSource) -> GaussianStats:
        """Gaussian statistics of the first ``num_videos`` videos of ``source`` (tensor, batches or dict batches)."""
        chunks, count = [], 0
        for batch in iter_video_batches(source, self.batch_size):
            batch = batch[: self.num_videos - count]
            chunks.append(self.features(batch))
            count += batch.shape[0]
            if count >= self.num_videos:
                break
        if count < self.num_videos:
            raise ValueError(
                f"{self.name}: needs {self.num_videos} videos, got only {count}; "
                f"pass num_videos={count} (the metric is then named fvd{count}_{self.frames}f)"
            )
        return feature_stats(torch.cat(chunks))

    def cache_path(self, key: str) -> Path:
        safe_key = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.cache_dir / f"{self.name}-{safe_key}-i3d{self.detector_hash}.pt"

    def real_stats(self, source: VideoSource, key: str) -> GaussianStats:
        """Real-data statistics, read from the cache when ``key`` (the data's identity: root, split, size...),
        the protocol and the detector file all match a previous call; computed and cached otherwise. A cache file
        that does not load or validate (:meth:`_cache_problem`) is one warning naming it, then computed again
        and replaced."""
        path = self.cache_path(key)
        saved = read_cache_entry(
            path, lambda entry: self._cache_problem(entry, key), "FVD statistics cache", "computing them again"
        )
        if saved is not None:
            return GaussianStats(saved["mu"], saved["sigma"], saved["num"])
        stats = self.stats(source)
        entry = {
            "mu": stats.mu,
            "sigma": stats.sigma,
            "num": stats.num,
            "key": key,
            "protocol": self.name,
            "detector": str(self.detector_path),
            "detector_sha256": self.detector_hash,
            "digest": stats_digest(stats.mu, stats.sigma),
        }
        save_atomic(entry, path)
        return stats

    def _cache_problem(self, entry: object, key: str) -> Optional[str]:
        """Why a loaded statistics file cannot be used (None: it can): it must be this key's, protocol's and
        detector's, hold a finite float64 mean (D,) and a symmetric covariance (D, D) of ``num_videos`` videos,
        and match the digest written with it (an edited mean gave FVD 1.4e7 without a word)."""
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), torch.Tensor) for k in ("mu", "sigma")):
            return "not a {mu, sigma, num} statistics entry"
        wanted = {"key": key, "protocol": self.name, "detector_sha256": self.detector_hash, "num": self.num_videos}
        for name, value in wanted.items():
            if entry.get(name) != value:
                return f"{name} is {entry.get(name)!r}, expected {value!r}"
        mu, sigma = entry["mu"], entry["sigma"]
        if mu.dtype != torch.float64 or sigma.dtype != torch.float64 or mu.ndim != 1 or sigma.shape != (len(mu),) * 2:
            return f"a mean {tuple(mu.shape)} {mu.dtype} and covariance {tuple(sigma.shape)} {sigma.dtype}, expected (D,) and (D, D) float64"
        if not bool(mu.isfinite().all() and sigma.isfinite().all()):
            return "NaN or inf in the statistics"
        if not torch.allclose(sigma, sigma.T) or bool((sigma.diagonal() < 0).any()):
            return "the covariance is not symmetric with a non-negative diagonal"
        if entry.get("digest") != stats_digest(mu, sigma):
            return "the statistics do not match the digest written with them"
        return None

    def score(self, fake_sets: Sequence[VideoSource], real: GaussianStats) -> dict:
        """FVD of each generated set (one per sampling seed) against ``real``: mean, sample std and the values."""
        values = [frechet_distance_from_stats(self.stats(fake), real) for fake in fake_sets]
        return summarise(self.name, values)


def summarise(name: str, values: Sequence[float]) -> dict:
    """``{name: mean, name_std: std (ddof=1; 0.0 for a single seed), name_per_seed: values, name_num_seeds: n}``."""
    if len(values) == 0:
        raise ValueError(f"{name}: no generated sets to score")
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if len(values) > 1 else 0.0
    return {
        name: float(t.mean()),
        f"{name}_std": std,
        f"{name}_per_seed": list(map(float, values)),
        f"{name}_num_seeds": len(values),
    }
