"""Data sets: where (path, caption) records come from, the torch Dataset that turns them into
training examples while skipping bad files, and the embedded moving-shapes set.

Three sources of records, all ending as :class:`Record` lists split into train / val:

* a manifest (CSV or JSONL) with columns ``path, caption`` and optional ``fps, split``;
* a folder of videos / images with sidecar ``<name>.txt`` captions or one ``captions.csv``;
* the embedded moving-shapes set (:func:`generate_shapes`), which is a folder with a manifest.

Without a ``split`` column a deterministic ~5 % (at least one record) is held out for validation.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..errors import UserError
from .video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    BadFileError,
    is_image_file,
    is_video_file,
    pad_video,
    read_image,
    read_video,
    write_video,
)

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
REQUIRED_COLUMNS = ("path", "caption")
VAL_FRACTION = 0.05  # held out when a source has no split column
MAX_RETRIES = 64  # consecutive unreadable files before the loader gives up (a broken data set, not one file)


class DataError(UserError, ValueError):
    """A data set that cannot be used at all (empty, bad manifest). One line naming the file."""


# --------------------------------------------------------------------------------------------
# Records: manifests and folders
# --------------------------------------------------------------------------------------------


@dataclass
class Record:
    path: str  # absolute
    caption: str
    fps: Optional[float] = None  # overrides the container's frame rate when given
    split: Optional[str] = None  # "train" | "val" | None (decided by split_records)

    @property
    def is_image(self) -> bool:
        return is_image_file(self.path)


def _optional_fps(value, where: str) -> Optional[float]:
    """A manifest's fps cell: empty for "the container's", else a frame rate > 0 (DataError naming ``where``)."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        fps = float(value)
    except (TypeError, ValueError):
        fps = math.nan
    if not (fps > 0 and math.isfinite(fps)):
        raise DataError(f"{where}: fps {value!r} is not a frame rate (expected a number > 0, or empty for the file's own)")
    return fps


def _normalise_split(value) -> Optional[str]:
    if value is None or str(value).strip() == "":
        return None
    split = str(value).strip().lower()
    return {"validation": "val", "valid": "val", "test": "val"}.get(split, split)


def load_manifest(path: str | Path) -> list[Record]:
    """Records from a CSV or JSONL manifest; relative paths are relative to the manifest's folder.
    Raises DataError naming the file when it is unreadable or lacks ``path``/``caption``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    try:  # bytes, so that csv sees the line ends as they are; utf-8-sig drops a spreadsheet's byte-order mark
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"manifest {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    if path.suffix.lower() == ".jsonl":
        rows, lines = [], []  # lines: each row's line number, for error messages
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"manifest {path} line {n}: not valid JSON ({err.msg})") from None
                if not isinstance(rows[-1], dict):
                    raise DataError(f"manifest {path} line {n}: expected a JSON object with path and caption")
                lines.append(n)
        columns = set().union(*(row.keys() for row in rows)) if rows else set()
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows, lines = [], []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
        columns = set(reader.fieldnames or ())
    else:
        raise DataError(f"manifest {path}: expected a .csv or .jsonl file")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"manifest {path} lacks required column(s) {', '.join(missing)} "
            f"(needs {', '.join(REQUIRED_COLUMNS)}; optional fps, split; found: {', '.join(sorted(columns)) or 'none'})"
        )
    return [
        Record(
            path=str((path.parent / str(row["path"])).resolve()),
            caption=str(row.get("caption") or ""),
            fps=_optional_fps(row.get("fps"), f"manifest {path} line {n}"),
            split=_normalise_split(row.get("split")),
        )
        for row, n in zip(rows, lines)
    ]


def scan_folder(root: str | Path, skip_log: Optional[SkipLog] = None) -> list[Record]:
    """Every video / image under ``root`` (recursive, sorted) with its caption: from
    ``root/captions.csv`` (columns path, caption; path relative to root) when present, else
    from a sidecar ``<file stem>.txt``. A file with neither is captioned with its name (warned once).
    A file whose sidecar is not UTF-8 text is skipped (a warning, counted in ``skip_log``), and so are the
    ``captions.csv`` rows that name no video or image under ``root`` (one warning for all of them)."""
    root = Path(root)

    def skip(err: BadFileError, warn: bool = True) -> None:
        if skip_log is not None:
            skip_log.add(err, warn)
        elif warn:
            log.warning("skipping bad file %s", err)

    files = sorted(p for p in root.rglob("*") if p.is_file() and (is_video_file(p) or is_image_file(p)))
    table: dict[str, str] = {}
    captions_csv = root / "captions.csv"
    if captions_csv.is_file():
        table = {str((root / r.path).resolve()): r.caption for r in load_manifest(captions_csv)}
        found = {str(file.resolve()) for file in files}
        absent = [path for path in table if path not in found]
        for path in absent:
            reason = "not a video or image under the data root" if Path(path).exists() else "file not found"
            skip(BadFileError(path, f"listed in {captions_csv.name}, but {reason}"), warn=False)
        if absent:
            names = ", ".join(os.path.relpath(path, root) for path in absent[:3]) + (", ..." if len(absent) > 3 else "")
            log.warning("%s: %d row(s) name no video or image file under %s, skipped: %s", captions_csv, len(absent),
                        root, names)
    records, unnamed = [], 0
    for file in files:
        caption = table.get(str(file.resolve()))
        sidecar = file.with_suffix(".txt")
        if caption is None and sidecar.is_file():
            try:
                caption = sidecar.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError as err:
                skip(BadFileError(file, f"its caption {sidecar.name} is not UTF-8 text (byte {err.start})"))
                continue
        if caption is None:
            caption, unnamed = re.sub(r"[_\-]+", " ", file.stem), unnamed + 1
        records.append(Record(path=str(file.resolve()), caption=caption))
    if unnamed:
        log.warning("%s: %d file(s) have no caption (.txt sidecar or captions.csv); using their file names", root, unnamed)
    return records


def _held_out(path: str) -> bool:
    # a hash of the path, so adding files does not move existing ones between splits
    return int(hashlib.sha1(path.encode()).hexdigest()[:8], 16) % round(1 / VAL_FRACTION) == 0


def split_records(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(train, val) by the ``split`` column when any record has one, else a deterministic ~5 %
    hold-out (at least one record; a one-record set is used for both)."""
    if any(r.split is not None for r in records):
        return [r for r in records if r.split in (None, "train")], [r for r in records if r.split == "val"]
    val = [r for r in records if _held_out(r.path)] or records[-1:]
    if len(records) == 1:
        return records, val
    val_paths = {r.path for r in val}
    return [r for r in records if r.path not in val_paths], val


def load_records(root: str | Path, manifest: Optional[str] = None,
                 skip_log: Optional[SkipLog] = None) -> tuple[list[Record], list[Record]]:
    """(train, val) records for ``data.root`` / ``data.manifest``. ``root`` may be a folder (its
    manifest.csv / manifest.jsonl is used when present, else its files are scanned) or a manifest
    file. Raises DataError for a missing root, a bad manifest or an empty data set; files skipped while
    scanning a folder go to ``skip_log``."""
    root = Path(root)
    if manifest is not None:
        source = root / manifest if not Path(manifest).is_absolute() else Path(manifest)
        records = load_manifest(source)
    elif root.is_file():
        source, records = root, load_manifest(root)
    elif root.is_dir():
        found = [root / name for name in MANIFEST_NAMES if (root / name).is_file()]
        source = found[0] if found else root
        records = load_manifest(source) if found else scan_folder(root, skip_log)
    else:
        raise DataError(f"data.root {root} does not exist (expected a folder of videos/images or a manifest file)")
    if not records:
        raise DataError(
            f"data set at {source} is empty: no video ({', '.join(VIDEO_EXTENSIONS)}) or image "
            f"({', '.join(IMAGE_EXTENSIONS)}) files" + (" listed" if source.is_file() else " found")
        )
    train, val = split_records(records)
    if not train:
        raise DataError(f"data set at {source} has no training records (all {len(records)} are split=val)")
    return train, val


# --------------------------------------------------------------------------------------------
# Skipped files: counted across DataLoader workers
# --------------------------------------------------------------------------------------------


class SkipLog:
    """Bad files seen by any process, one marker file each in ``folder``: creating the marker with
    O_EXCL makes exactly one process (worker) print the warning, and the count is the number of
    distinct bad files whichever worker met them. ``folder=None`` keeps the log in this process only."""

    def __init__(self, folder: Optional[str | Path] = None):
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="lit_snapvideo_skipped_"))
        self.folder.mkdir(parents=True, exist_ok=True)
        if folder is None:
            atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    def add(self, err: BadFileError, warn: bool = True) -> None:
        """Count ``err``'s file once; ``warn``: its own warning line (off when the caller warns for many at once)."""
        marker = self.folder / (hashlib.sha1(err.path.encode()).hexdigest() + ".txt")
        try:
            with marker.open("x") as f:
                f.write(f"{err.path}\t{err.reason}\n")
        except FileExistsError:
            return
        if warn:
            log.warning("skipping bad file %s", err)

    def count(self) -> int:
        return sum(1 for _ in self.folder.glob("*.txt"))

    def reasons(self) -> dict[str, str]:
        lines = (p.read_text().rstrip("\n").split("\t", 1) for p in sorted(self.folder.glob("*.txt")))
        return {path: reason for path, reason in lines}


# --------------------------------------------------------------------------------------------
# The torch Dataset
# --------------------------------------------------------------------------------------------


class ClipDataset(Dataset):
    """Records -> training examples ``{"video": (3, T, *size) float32 in [-1, 1] (or padded to
    ``pad_to``), "caption": str, "fps": float32 (), "orig_size": float32 (2,), "is_image": bool (),
    "key": int64 ()}``; ``key`` is the sample seed of ``dataset[(i, seed)]``, else ``i``.

    ``dataset[i]`` with ``train=False``: ``fps_choices[0]`` and frame 0, so the same index always
    gives the same tensor. ``dataset[(i, seed)]`` (what :class:`JointSampler` yields): a frame rate
    drawn from ``fps_choices`` and a start frame, both from ``seed``, so the training stream does not
    depend on the worker count and replays exactly on resume. ``dataset[i]`` with ``train=True``
    draws them from torch's global RNG instead. A bad file is logged once in ``skip_log`` and
    replaced by another item of the same kind (the next one in validation, a random one in training).
    """

    def __init__(
        self,
        records: Sequence[Record],
        frames: int,
        size: Sequence[int],
        pad_to: Optional[Sequence[int]] = None,
        fps_choices: Sequence[float] = (8.0,),
        train: bool = False,
        skip_log: Optional[SkipLog] = None,
    ):
        self.records = list(records)
        self.frames, self.size, self.pad_to = frames, tuple(size), pad_to
        self.fps_choices, self.train, self.skip_log = list(fps_choices), train, skip_log or SkipLog()
        self.is_image = [r.is_image for r in self.records]
        self._bad: set[int] = set()  # per worker: indices known to fail, never retried

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, rng: Optional[torch.Generator] = None) -> dict:
        """One example (``rng``: random frame rate and start, else deterministic); raises BadFileError."""
        r = self.records[index]
        if r.is_image:
            video, fps, orig_hw = read_image(r.path, self.frames, self.size)
        else:
            video, fps, orig_hw = read_video(r.path, self.frames, self.size, self.fps_choices, r.fps, rng)
        return {
            "video": pad_video(video, self.pad_to) if self.pad_to else video,
            "caption": r.caption,
            "fps": torch.tensor(fps, dtype=torch.float32),
            "orig_size": torch.tensor(orig_hw, dtype=torch.float32),
            "is_image": torch.tensor(r.is_image),
        }

    def _replacement(self, index: int, rng: Optional[torch.Generator]) -> int:
        same_kind = [i for i, img in enumerate(self.is_image) if img == self.is_image[index] and i not in self._bad]
        candidates = same_kind or [i for i in range(len(self)) if i not in self._bad]
        if not candidates:
            example = next(iter(self.skip_log.reasons().items()), ("", ""))
            raise DataError(f"all {len(self)} files of this data set are unreadable (e.g. {example[0]}: {example[1]}); "
                            "`lit-snapvideo data check` lists them")
        if rng is not None:
            return candidates[int(torch.randint(len(candidates), (1,), generator=rng))]
        return next((i for i in candidates if i > index), candidates[0])  # deterministic: the next good one

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            rng = torch.Generator().manual_seed(seed)
        else:
            rng = torch.default_generator if self.train else None
        # the example's own key (seeds its diffusion noise), kept when a bad file is replaced
        sample_key = torch.tensor(seed if seed is not None else index, dtype=torch.int64)
        for _ in range(MAX_RETRIES):
            if index not in self._bad:
                try:
                    return {**self.load(index, rng), "key": sample_key}
                except BadFileError as err:
                    self._bad.add(index)
                    self.skip_log.add(err)
            index = self._replacement(index, rng)
        raise DataError(f"{MAX_RETRIES} unreadable files in a row; the data set looks broken (the warnings above name "
                        "them; `lit-snapvideo data check` lists all)")


class JointSampler(Sampler[tuple[int, int]]):
    """An endless, resumable training stream cut into passes of ``len(is_image)`` draws, sharded over ranks.

    Draw number ``p`` (counted from the start of training, over all ranks) is a function of ``(seed, p)`` only:
    an image with probability ``image_fraction`` and a video otherwise (when only one kind exists,
    it is used for every draw), uniformly within the kind, plus a per-sample seed for the frame
    rate and start. Yields ``(index, sample_seed)`` for :class:`ClipDataset`.

    Under data parallelism (``world_size`` > 1) rank ``r`` takes the draws ``p`` with ``p % world_size == r`` of
    each pass, ``len(is_image) // world_size`` of them: every rank keeps the image/video ratio, and the
    ``world_size`` per-rank batches of a step together are the one-process batch of ``world_size`` x the size.

    Each pass starts at ``consumed()`` when given: the number of draws training has used so far over all ranks
    (the DataModule counts them and checkpoints carry the count). A Lightning epoch resumed part-way
    ends after fewer draws than a pass and ``drop_last`` leaves draws unused, so the next pass must
    start where training stopped, not a whole pass after the previous start. Without ``consumed``
    the passes follow each other from ``start``.
    """

    def __init__(self, is_image: Sequence[bool], image_fraction: float, seed: int = 0, start: int = 0,
                 consumed: Optional[Callable[[], int]] = None, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.images = [i for i, img in enumerate(is_image) if img]
        self.videos = [i for i, img in enumerate(is_image) if not img]
        self.image_fraction = image_fraction if self.images and self.videos else float(bool(self.images))
        self.num_samples, self.seed, self.position, self.consumed = len(is_image), seed, start, consumed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.num_samples // self.world_size  # the same on every rank: DDP ranks must run equal step counts

    def draw(self, p: int) -> tuple[int, int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + p) % 2**63)
        pool = self.images if float(torch.rand((), generator=g)) < self.image_fraction else self.videos
        return pool[int(torch.randint(len(pool), (), generator=g))], int(torch.randint(2**62, (), generator=g))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self.consumed() if self.consumed is not None else self.position
        self.position = first + self.num_samples
        own = range(first + self.rank, first + len(self) * self.world_size, self.world_size)
        return (self.draw(p) for p in own)


# --------------------------------------------------------------------------------------------
# The embedded moving-shapes set
# --------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle")
COLORS = {  # name -> RGB
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "cyan": (30, 220, 220),
}
BACKGROUNDS = ("black", "white", "gray", "checkered")  # an object never has its background's colour
DIRECTIONS = {  # name -> (caption phrase, unit (dx, dy) in image coordinates, y down)
    "left": ("left", (-1.0, 0.0)),
    "right": ("right", (1.0, 0.0)),
    "up": ("up", (0.0, -1.0)),
    "down": ("down", (0.0, 1.0)),
    "up-left": ("up and to the left", (-math.sqrt(0.5), -math.sqrt(0.5))),
    "up-right": ("up and to the right", (math.sqrt(0.5), -math.sqrt(0.5))),
    "down-left": ("down and to the left", (-math.sqrt(0.5), math.sqrt(0.5))),
    "down-right": ("down and to the right", (math.sqrt(0.5), math.sqrt(0.5))),
}
SIZES = {"small": 0.11, "large": 0.2}  # object radius as a fraction of the frame height
NATIVE_FPS = (8, 10, 12, 15, 20, 24, 25, 30)
SPEED_RANGE = (0.4, 0.8)  # frame heights per second: 1.8-3.6 px/frame at 36 px high and 8 fps
IMAGE_SHARE = 0.1
# Variants of the set. "full": the whole vocabulary, two objects in 20% of clips, bouncing in 25%, checkered
# backgrounds. "simple" (the CPU ablation's set): one large object on a plain background, straight motion; the
# same shapes, colours, directions and caption grammar, so the probe and the sample prompts apply to both.
VARIANTS = {
    "full": dict(backgrounds=BACKGROUNDS, sizes=tuple(SIZES), two_object_share=0.2, bounce_share=0.25),
    "simple": dict(backgrounds=("black", "white", "gray"), sizes=("large",), two_object_share=0.0, bounce_share=0.0),
}
EMBEDDED_ROOTS = {"data/shapes": "full", "data/shapes_simple": "simple"}  # default folder -> variant
BOUNCE_PHRASE = "and bouncing off the edges"

_BG_RGB = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
_OBJECT_RE = re.compile(
    r"a (?P<size>{}) (?P<color>{}) (?P<shape>{})(?: moving (?P<direction>{}))?(?P<bounce> {})?".format(
        "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES),
        "|".join(sorted((p for p, _ in DIRECTIONS.values()), key=len, reverse=True)), BOUNCE_PHRASE,
    )
)
_BACKGROUND_RE = re.compile(r" on a ({}) background$".format("|".join(BACKGROUNDS)))
_PHRASE_TO_DIRECTION = {phrase: name for name, (phrase, _) in DIRECTIONS.items()}
MANIFEST_COLUMNS = (
    "path", "caption", "split", "is_image", "fps", "num_frames", "height", "width", "background", "n_objects",
    "shape", "color", "size", "direction", "speed", "bounce", "shape2", "color2", "size2", "direction2", "speed2", "bounce2",
)


def make_caption(objects: Sequence[dict], background: str) -> str:
    """'a small red circle moving left on a black background'; objects without a direction
    (still images) get no motion phrase; two objects are joined with 'and'."""
    parts = []
    for o in objects:
        text = f"a {o['size']} {o['color']} {o['shape']}"
        if o.get("direction"):
            text += f" moving {DIRECTIONS[o['direction']][0]}" + (f" {BOUNCE_PHRASE}" if o.get("bounce") else "")
        parts.append(text)
    return " and ".join(parts) + f" on a {background} background"


def parse_caption(caption: str) -> dict:
    """Attributes back from a moving-shapes caption (the inverse of :func:`make_caption`):
    ``{"shape", "color", "size", "direction" (None for a still), "bounce", "background",
    "objects": [per-object dicts]}``; the top-level object keys describe the first object.
    Raises ValueError for a caption outside the vocabulary."""
    objects = [
        {
            "size": m["size"], "color": m["color"], "shape": m["shape"],
            "direction": _PHRASE_TO_DIRECTION[m["direction"]] if m["direction"] else None,
            "bounce": bool(m["bounce"]),
        }
        for m in _OBJECT_RE.finditer(caption)
    ]
    background = _BACKGROUND_RE.search(caption)
    if not objects or background is None:
        raise ValueError(f"not a moving-shapes caption: {caption!r}")
    return {**objects[0], "background": background[1], "objects": objects}


def is_shapes_caption(caption: str) -> bool:
    """Whether ``caption`` is in the moving-shapes grammar (:func:`parse_caption` reads it)."""
    try:
        parse_caption(caption)
    except ValueError:
        return False
    return True


def _even(v: float) -> int:
    return 2 * int(round(v / 2))


def _shape_alpha(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape of circumradius ~r centred at (cx, cy), from a
    signed distance d (negative inside): alpha = clip(0.5 - d, 0, 1)."""
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        d = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) - 0.8 * r
    else:  # equilateral triangle, apex up: three half-planes at the inradius r/2
        up = -dy
        d = np.maximum(np.maximum(-up, 0.866 * dx + 0.5 * up), -0.866 * dx + 0.5 * up) - 0.5 * r
    return np.clip(0.5 - d, 0.0, 1.0)


def _background(name: str, h: int, w: int) -> np.ndarray:
    if name == "checkered":  # a dark two-tone checkerboard: texture that no object colour matches
        cell = max(2, h // 6)
        yy, xx = np.mgrid[0:h, 0:w]
        board = ((yy // cell + xx // cell) % 2).astype(np.float32)
        return np.repeat((50 + 40 * board)[..., None], 3, axis=2)
    return np.broadcast_to(np.array(_BG_RGB[name], np.float32), (h, w, 3)).copy()


def _positions(o: dict, t: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) at times ``t`` (s). Straight motion on a torus (what leaves one side enters
    at the other at once, so the object is always whole on screen, maybe split across an edge),
    or bouncing off the edges when ``o['bounce']``."""
    r = o["radius"]
    out = []
    for start, v, extent in ((o["x0"], o["vx"], w), (o["y0"], o["vy"], h)):
        p = start + v * t
        if o["bounce"]:  # reflect inside [r, extent - r]: a triangle wave
            lo, span = r, max(extent - 2 * r, 1e-3)
            u = np.mod(p - lo, 2 * span)
            out.append(lo + np.where(u < span, u, 2 * span - u))
        else:
            out.append(np.mod(p, extent))
    return out[0], out[1]


def _sample_clip(rng: np.random.Generator, variant: str = "full") -> dict:
    """Attributes of one clip of a :data:`VARIANTS` set (everything the renderer and the caption need).
    The draws before the objects are the same in every variant: a clip's frame size, fps and length do not depend on it."""
    v = VARIANTS[variant]
    h = _even(rng.uniform(72, 144))
    w = min(256, _even(h * rng.uniform(1.65, 1.85)))
    is_image = rng.random() < IMAGE_SHARE
    fps = int(rng.choice(NATIVE_FPS))
    num_frames = 1 if is_image else int(round(fps * rng.uniform(2.0, 4.0)))
    background = str(rng.choice(v["backgrounds"]))
    objects = []
    for _ in range(2 if rng.random() < v["two_object_share"] else 1):
        while True:  # an object never takes the background's colour, and two objects differ
            o = {"shape": str(rng.choice(SHAPES)), "color": str(rng.choice(list(COLORS))), "size": str(rng.choice(v["sizes"]))}
            if o["color"] != background and all((o["shape"], o["color"]) != (p["shape"], p["color"]) for p in objects):
                break
        o["radius"] = SIZES[o["size"]] * h
        o["x0"], o["y0"] = rng.uniform(o["radius"], w - o["radius"]), rng.uniform(o["radius"], h - o["radius"])
        o["direction"], o["speed"], o["bounce"], o["vx"], o["vy"] = None, 0.0, False, 0.0, 0.0
        if not is_image:
            o["direction"] = str(rng.choice(list(DIRECTIONS)))
            o["speed"] = float(rng.uniform(*SPEED_RANGE))
            o["bounce"] = bool(rng.random() < v["bounce_share"])
            ux, uy = DIRECTIONS[o["direction"]][1]
            o["vx"], o["vy"] = ux * o["speed"] * h, uy * o["speed"] * h
            if o["bounce"]:  # start on the trailing side, so the first bounce comes late
                o["x0"] = w / 2 - ux * (w / 2 - o["radius"]) * rng.uniform(0.6, 1.0)
                o["y0"] = h / 2 - uy * (h / 2 - o["radius"]) * rng.uniform(0.6, 1.0)
        objects.append(o)
    return {"height": h, "width": w, "is_image": is_image, "fps": fps, "num_frames": num_frames,
            "background": background, "objects": objects, "caption": make_caption(objects, background)}


def render_clip(clip: dict) -> np.ndarray:
    """uint8 (num_frames, H, W, 3) frames of a clip from :func:`_sample_clip`."""
    h, w, n = clip["height"], clip["width"], clip["num_frames"]
    background = _background(clip["background"], h, w)
    t = np.arange(n) / clip["fps"]
    centres = [_positions(o, t, h, w) for o in clip["objects"]]
    out = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        frame = background.copy()
        for o, (xs, ys) in zip(clip["objects"], centres):
            r, rgb = o["radius"], np.array(COLORS[o["color"]], np.float32)
            for cx in (xs[k] - w, xs[k], xs[k] + w):  # the torus copies that reach into the frame
                for cy in (ys[k] - h, ys[k], ys[k] + h):
                    # only the object's bounding box is shaded (pixel centres at +0.5)
                    y0, y1 = max(0, int(cy - r - 2)), min(h, int(cy + r + 3))
                    x0, x1 = max(0, int(cx - r - 2)), min(w, int(cx + r + 3))
                    if y0 >= y1 or x0 >= x1:
                        continue
                    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
                    alpha = _shape_alpha(o["shape"], xx, yy, cx, cy, r)[..., None]
                    frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - alpha) + rgb * alpha
        out[k] = frame.round().astype(np.uint8)
    return out


def _make_one(job: tuple[str, str, int, int, str]) -> dict:
    """Render and write one clip; returns its manifest row. The attributes depend only on
    (seed, split, index, variant), so the worker count does not change the data set."""
    out, split, index, seed, variant = job
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    clip = _sample_clip(rng, variant)
    rel = f"{split}/{index:06d}." + ("png" if clip["is_image"] else "mp4")
    frames = render_clip(clip)
    if clip["is_image"]:
        Image.fromarray(frames[0]).save(Path(out) / rel)
    else:
        write_video(Path(out) / rel, frames, clip["fps"], crf=20)
    row = {"path": rel, "caption": clip["caption"], "split": split, "is_image": int(clip["is_image"]),
           "fps": "" if clip["is_image"] else clip["fps"], "num_frames": clip["num_frames"],
           "height": clip["height"], "width": clip["width"], "background": clip["background"],
           "n_objects": len(clip["objects"])}
    for k, o in enumerate(clip["objects"]):
        suffix = "" if k == 0 else str(k + 1)
        row.update({f"shape{suffix}": o["shape"], f"color{suffix}": o["color"], f"size{suffix}": o["size"],
                    f"direction{suffix}": o["direction"] or "", f"speed{suffix}": round(o["speed"], 4),
                    f"bounce{suffix}": int(o["bounce"])})
    return row


def generate_shapes(out: str | Path, n_train: int, n_val: int, seed: int = 0, workers: Optional[int] = None,
                    variant: str = "full") -> Path:
    """Write the moving-shapes set (``variant``: a :data:`VARIANTS` key): ``out/{train,val}/NNNNNN.{mp4,png}``
    and ``out/manifest.csv`` (columns :data:`MANIFEST_COLUMNS`; speed in frame heights per second). The
    manifest is written last, so its presence means the set is complete. Returns the manifest path."""
    if variant not in VARIANTS:
        raise ValueError(f"moving-shapes variant {variant!r} is unknown (expected one of {', '.join(VARIANTS)})")
    out = Path(out)
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), split, i, seed, variant) for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = list(pool.imap(_make_one, jobs, chunksize=8))
    else:
        rows = [_make_one(job) for job in jobs]
    seconds = time.perf_counter() - started
    manifest = out / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(manifest)
    log.info("moving-shapes: %d clips in %.1f s (%.1f clips/s, %d workers) -> %s",
             len(rows), seconds, len(rows) / max(seconds, 1e-9), workers, manifest)
    return manifest
