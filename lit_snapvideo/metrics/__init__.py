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

Videos are always ``(B, 3, T, H, W)`` floats in [-1, 1], as the data module yields them.
"""

from .clipsim import CLIPSim, clipsim
from .fid import FID
from .frechet import GaussianStats, feature_stats, frechet_distance, frechet_distance_from_stats
from .fvd import FVD

__all__ = [
    "CLIPSim", "clipsim", "FID", "FVD", "GaussianStats", "feature_stats", "frechet_distance",
    "frechet_distance_from_stats",
]
