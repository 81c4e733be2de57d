"""Video and image IO for training: decode (decord), encode (PyAV), frame-rate resampling,
resize + centre crop, and the one padding step to the backbone's divisible size (paper §3.2).

A clip becomes a float tensor (3, T, H, W) in [-1, 1]. A still image becomes T identical frames
with an "infinite" frame rate (paper §2.6: images are T-frame videos at infinite fps, so they need
the same sigma_in as videos). Every problem with a file raises :class:`BadFileError` whose message
is one line naming the file and the reason, so the dataset can skip it and go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import av
import decord
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's own log lines would duplicate our one-line warnings

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IMAGE_FPS = math.inf  # paper §2.6: a still image is a video at infinite frame rate


class BadFileError(Exception):
    """A file that cannot become a training example. ``str(err)`` is '<path>: <reason>'."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def is_video_file(path: str | Path) -> bool:
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


# --------------------------------------------------------------------------------------------
# Geometry: resize the short side, centre crop, pad
# --------------------------------------------------------------------------------------------


def cover_size(src_hw: Sequence[int], crop_hw: Sequence[int]) -> tuple[int, int]:
    """Smallest (H, W) with the source's aspect ratio that covers ``crop_hw`` (even sizes, as
    yuv420 decoders want)."""
    scale = max(crop_hw[0] / src_hw[0], crop_hw[1] / src_hw[1])
    even = lambda v: max(2, 2 * math.ceil(v / 2))
    return even(src_hw[0] * scale - 1e-6), even(src_hw[1] * scale - 1e-6)


def center_crop(frames: np.ndarray, crop_hw: Sequence[int]) -> np.ndarray:
    """(T, H, W, C) -> (T, h, w, C), the central window."""
    h, w = crop_hw
    top, left = (frames.shape[1] - h) // 2, (frames.shape[2] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {frames.shape[1:3]} to {tuple(crop_hw)}")
    return frames[:, top : top + h, left : left + w]


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]. In numpy: one thread, where torch's
    parallel kernels on a clip this small cost more in thread wake-ups than they save."""
    x = np.transpose(frames, (3, 0, 1, 2)).astype(np.float32)
    return torch.from_numpy(x * np.float32(1 / 127.5) - np.float32(1.0))


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (..., 3, T, H, W) in [-1, 1] -> uint8 (..., T, H, W, 3) (the inverse of :func:`to_tensor`)."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).cpu().numpy()


def pad_video(video: torch.Tensor, pad_to: Sequence[int]) -> torch.Tensor:
    """Pad the last two dims (H, W) to ``pad_to`` with 0 (mid-grey in [-1, 1]), centred.

    This is the ONE place where clips grow to the backbone's divisible size (paper §3.2: the
    36x64 first stage is padded by 4 px vertically to 40x64; the paper leaves the split open,
    we put half on top and the rest at the bottom). (..., h, w) -> (..., H, W).
    """
    h, w = video.shape[-2:]
    ph, pw = pad_to[0] - h, pad_to[1] - w
    if ph < 0 or pw < 0:
        raise ValueError(f"pad_video: frame {h}x{w} is larger than pad_to {pad_to[0]}x{pad_to[1]}")
    return F.pad(video, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


def crop_padding(video: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pad_video`: (..., H, W) -> the centred (..., h, w) window, e.g. to show
    a generated sample without its padding."""
    H, W = video.shape[-2:]
    top, left = (H - size[0]) // 2, (W - size[1]) // 2
    return video[..., top : top + size[0], left : left + size[1]]


# --------------------------------------------------------------------------------------------
# Frame-rate resampling
# --------------------------------------------------------------------------------------------


def span_frames(frames: int, native_fps: float, fps: float) -> int:
    """Source frames covered by ``frames`` output frames at ``fps`` (the first to the last)."""
    return round((frames - 1) * native_fps / fps) + 1


def feasible_fps(choices: Sequence[float], native_fps: float, num_frames: int, frames: int) -> list[float]:
    """The frame rates from ``choices`` a clip can give: at most its native rate (we never invent
    frames) and short enough in time to fit ``frames`` frames into its ``num_frames``."""
    return [f for f in choices if f <= native_fps + 1e-6 and span_frames(frames, native_fps, f) <= num_frames]


def frame_indices(frames: int, native_fps: float, fps: float, start: int = 0) -> np.ndarray:
    """Source indices of ``frames`` frames sampled at ``fps`` from a clip at ``native_fps``,
    starting at source frame ``start``: index k = start + round(k * native_fps / fps)."""
    return start + np.round(np.arange(frames) * (native_fps / fps)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class VideoInfo:
    height: int
    width: int
    num_frames: int  # as counted by decord (frames it can seek to)
    fps: float


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise BadFileError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadFileError(path, "empty file (0 bytes)")


def _probe_size(path: Path) -> tuple[int, int]:
    """(H, W) from the container header with PyAV: cheap, and a clean error for files that are
    not video at all (decord would print ffmpeg's complaints to stderr first)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadFileError(path, "no video stream")
            ctx = container.streams.video[0].codec_context
            if not ctx.width or not ctx.height:
                raise BadFileError(path, "video stream without a frame size")
            return ctx.height, ctx.width
    except (av.FFmpegError, UnicodeDecodeError, OSError) as err:
        detail = getattr(err, "strerror", None) or str(err).splitlines()[0][:120]  # without the path again
        raise BadFileError(path, f"not a readable video ({type(err).__name__}: {detail})") from None


def _open_video(path: Path, frames: int, size: Sequence[int], native_fps: Optional[float]):
    """(reader, frames it has, its rate, original (H, W), decode (H, W)) of a video that can give ``frames`` frames
    at ``size``; raises BadFileError."""
    _check_file(path)
    orig_hw = _probe_size(path)
    decode_hw = cover_size(orig_hw, size)  # decord scales while decoding: no full-size frames in memory
    try:
        reader = decord.VideoReader(str(path), width=decode_hw[1], height=decode_hw[0], num_threads=1)
        num_frames, container_fps = len(reader), reader.get_avg_fps()
    except (decord.DECORDError, RuntimeError) as err:
        raise BadFileError(path, f"decord cannot open it ({str(err).splitlines()[0][:120]})") from None
    src_fps = float(native_fps) if native_fps else float(container_fps)
    if num_frames < frames:
        raise BadFileError(path, f"only {num_frames} frame(s), need at least {frames} (data.frames)")
    if not (src_fps > 0 and math.isfinite(src_fps)):
        raise BadFileError(path, f"unusable frame rate {src_fps!r}")
    return reader, num_frames, src_fps, orig_hw, decode_hw


def _decode(reader, path: Path, indices: Sequence[int], decode_hw: tuple[int, int], size: Sequence[int]) -> np.ndarray:
    """uint8 (T, *size, 3): frames ``indices`` decoded, scaled to cover ``size`` and centre-cropped."""
    try:
        batch = reader.get_batch(list(indices)).asnumpy()  # (T, H, W, 3) uint8
    except (decord.DECORDError, RuntimeError, IndexError) as err:
        raise BadFileError(path, f"decoding failed, truncated or corrupt? ({str(err).splitlines()[0][-120:]})") from None
    if batch.shape[1:3] != decode_hw:  # decord ignored the requested size: resize here
        batch = _resize_frames(batch, decode_hw)
    return center_crop(batch, size)


def choose_frames(
    frames: int, num_frames: int, src_fps: float, fps_choices: Sequence[float], rng: Optional[torch.Generator]
) -> tuple[np.ndarray, float]:
    """(source indices, fps) of a clip of ``frames`` frames: the rate drawn uniformly among the feasible choices
    (:func:`feasible_fps`; none fits: the native rate) and a random start with ``rng``; else the first feasible
    choice from frame 0."""
    choices = feasible_fps(fps_choices, src_fps, num_frames, frames) or [src_fps]
    if rng is None:
        fps = choices[0]
        start = 0
    else:
        fps = choices[int(torch.randint(len(choices), (1,), generator=rng))]
        start = int(torch.randint(num_frames - span_frames(frames, src_fps, fps) + 1, (1,), generator=rng))
    return np.minimum(frame_indices(frames, src_fps, fps, start), num_frames - 1), float(fps)


def read_video(
    path: str | Path,
    frames: int,
    size: Sequence[int],
    fps_choices: Sequence[float],
    native_fps: Optional[float] = None,
    rng: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Decode ``frames`` frames of a video at a frame rate drawn from ``fps_choices`` (:func:`choose_frames`).

    With ``rng`` the rate and the start frame are random (training); without it the first feasible choice and
    frame 0 are used (validation). ``native_fps`` overrides the container's rate (a manifest's fps column).

    Returns (video float32 (3, frames, h, w) in [-1, 1], effective fps, original (H, W)).
    Raises BadFileError.
    """
    path = Path(path)
    reader, num_frames, src_fps, orig_hw, decode_hw = _open_video(path, frames, size, native_fps)
    indices, fps = choose_frames(frames, num_frames, src_fps, fps_choices, rng)
    return to_tensor(_decode(reader, path, indices.tolist(), decode_hw, size)), fps, orig_hw


@dataclass
class DecodedVideo:
    """A whole video decoded once at the training size (``data.decoded_cache_mb``): uint8 ``frames`` (N, h, w, 3),
    its frame rate and original (H, W). :meth:`clip` draws from it exactly what :func:`read_video` would decode."""

    frames: np.ndarray
    fps: float
    orig_hw: tuple[int, int]

    @classmethod
    def read(cls, path: str | Path, frames: int, size: Sequence[int], native_fps: Optional[float] = None):
        path = Path(path)
        reader, num_frames, src_fps, orig_hw, decode_hw = _open_video(path, frames, size, native_fps)
        return cls(_decode(reader, path, range(num_frames), decode_hw, size), src_fps, orig_hw)

    def clip(
        self, frames: int, fps_choices: Sequence[float], rng: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, float, tuple[int, int]]:
        """:func:`read_video`'s (video, fps, original (H, W)), from the decoded frames."""
        indices, fps = choose_frames(frames, len(self.frames), self.fps, fps_choices, rng)
        return to_tensor(self.frames[indices]), fps, self.orig_hw


def _resize_frames(frames: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def downsample_video(video: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """(..., 3, T, H, W) in [-1, 1] -> (..., 3, T, *hw): the loader's own filter (antialiased bilinear), rounded to 8-bit
    levels like a decoded frame. An upsampler's low-resolution input, made from the same decoded clip."""
    lead, (c, t, h, w) = video.shape[:-4], video.shape[-4:]
    frames = video.reshape(-1, c, t, h, w).transpose(1, 2).reshape(-1, c, h, w)
    small = F.interpolate(frames.float(), size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    small = ((small + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    return small.reshape(-1, t, c, *hw).transpose(1, 2).reshape(*lead, c, t, *hw).to(video.dtype)


def read_image(path: str | Path, frames: int, size: Sequence[int]) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """A still image as a ``frames``-frame clip (paper §2.6). Returns (video (3, frames, h, w) in
    [-1, 1], math.inf, original (H, W)). Raises BadFileError."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")  # decodes fully, so a truncated file fails here
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise BadFileError(path, f"not a readable image ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    orig_hw = (img.height, img.width)
    h, w = cover_size(orig_hw, size)
    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    still = center_crop(np.asarray(img)[None], size)
    return to_tensor(np.repeat(still, frames, axis=0)), IMAGE_FPS, orig_hw


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18, preset: str = "veryfast") -> None:
    """Write uint8 (T, H, W, 3) RGB frames as an H.264 mp4 (yuv420p, so H and W must be even)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"write_video: H.264 yuv420p needs even H and W, got {frames.shape[1]}x{frames.shape[2]}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        stream.codec_context.thread_count = 1  # callers parallelise over files
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
