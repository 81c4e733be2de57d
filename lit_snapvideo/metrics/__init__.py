"""Quality metrics.

Standard metrics, which need detector files the user brings (nothing here downloads them):

* :func:`frechet_distance` ``(mu1, sigma1, mu2, sigma2) -> float`` and :func:`feature_stats` ``(feats (N, D))``:
  float64 Gaussian statistics and the Fréchet distance every metric below ends in.
* :class:`FVD` ``(detector_path, cache_dir, num_videos=2048, frames=16)``: stylegan-v's ``fvd2048_16f`` with a
  TorchScript I3D; ``.features(videos)``, ``.real_stats(source, key)`` (cached), ``.score(fake_sets, real)``
  (mean and std over sampling seeds).
* :class:`FID` ``(detector_path)``: per-frame FID with a TorchScript Inception; ``.update_real``, ``.score``.
* :class:`CLIPSim` ``(model_name, checkpoint, model_config=None)`` and :func:`clipsim`: frame-text CLIP
  cosine similarity with a local open_clip checkpoint.

The embedded moving-shapes set's own metrics, offline (:mod:`.probe`; they do not compare with published FVD):

* :func:`load_or_train_probe` ``(root, manifest=None, cache_dir=".cache/probe", **train_kwargs) -> Probe``: a
  small video classifier of shape, colour and direction, trained on the real clips and cached with its measured
  validation accuracy (``probe.meta["val_accuracy"]``); :func:`train_probe`, :func:`save_probe`, :func:`load_probe`.
* :func:`prompt_accuracy` ``(probe, videos, prompts) -> dict``: share of clips showing what their prompt asks.
* :func:`probe_fvd` ``(probe, videos, real=None) -> float``: Fréchet distance in probe features to the real
  validation clips.
* :func:`temporal_consistency` ``(videos) -> float``: ``1 - mean |x_{t+1} - x_t| / 2``.
* :func:`~.probe.probe_for` ``(cfg, cache_dir)``: the cached probe of an experiment's data set;
  :func:`~.probe.probe_metrics` ``(probe, videos, prompts)``: all of the above as ``probe/<name>`` keys.

Nothing here imports the training module: ``lit_snapvideo/evaluate.py`` and ``sweeps.py`` sample checkpoints and
score the samples with these.

Videos are always ``(B, 3, T, H, W)`` floats in [-1, 1], as the data module yields them.
"""

from .clipsim import CLIPSim, clipsim
from .fid import FID
from .frechet import GaussianStats, feature_stats, frechet_distance, frechet_distance_from_stats
from .fvd import FVD
from .probe import (
    Probe,
    load_or_train_probe,
    load_probe,
    probe_fvd,
    prompt_accuracy,
    save_probe,
    temporal_consistency,
    train_probe,
)

__all__ = [
    "CLIPSim",
    "clipsim",
    "FID",
    "FVD",
    "GaussianStats",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "Probe",
    "load_or_train_probe",
    "load_probe",
    "probe_fvd",
    "prompt_accuracy",
    "save_probe",
    "temporal_consistency",
    "train_probe",
]
