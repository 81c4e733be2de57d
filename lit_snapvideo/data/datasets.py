"""Data sets: where (path, caption) records come from, the torch Dataset that turns them into
training examples while skipping bad files, and the sampler of the joint image + video training stream.

Three sources of records, all ending as :class:`Record` lists split into train / val:

* a manifest (CSV or JSONL) with columns ``path, caption`` and optional ``fps, split``;
* a folder of videos / images with sidecar ``<name>.txt`` captions or one ``captions.csv``;
* the embedded moving-shapes set (:func:`.shapes.generate_shapes`), which is a folder with a manifest.

Without a ``split`` column a deterministic ~5 % (at least one record) is held out for validation.
"""

from __future__ import annotations

import atexit
import collections
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from ..errors import UserError
from .video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    BadFileError,
    downsample_video,
    is_image_file,
    is_video_file,
    pad_video,
    read_image,
    DecodedVideo,
    read_video,
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


SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "val"}


def _normalise_split(value, where: str) -> Optional[str]:
    """A manifest's split cell: empty (the hold-out decides), train, or val and its aliases. Anything else is a
    DataError naming ``where``: a typo such as ``trian`` would otherwise drop the row from both splits."""
    if value is None or str(value).strip() == "":
        return None
    split = SPLIT_NAMES.get(str(value).strip().lower())
    if split is None:
        raise DataError(
            f"{where}: split {value!r} is not train or val (expected train, val, validation, valid, test or empty)"
        )
    return split


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
            split=_normalise_split(row.get("split"), f"manifest {path} line {n}"),
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
        rows = load_manifest(captions_csv)
        table = {r.path: r.caption for r in rows}  # load_manifest resolves each path against root
        for path, times in collections.Counter(r.path for r in rows).items():
            if times > 1:  # the dict above keeps the last row: say so, a duplicate is usually a mistake
                log.warning("%s: %s is listed %d times; the last row's caption is used", captions_csv,
                            os.path.relpath(path, root), times)
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
    hold-out (at least one record, and at least one left to train on; a one-record set is used for both)."""
    if any(r.split is not None for r in records):
        return [r for r in records if r.split in (None, "train")], [r for r in records if r.split == "val"]
    val = [r for r in records if _held_out(r.path)]
    if not val or len(val) == len(records):  # none held out, or (a small set) every path hashed into the hold-out
        val = records[-1:]
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


def check_batch_size(batch_size: int, n_train: int, source, world_size: int = 1) -> None:
    """A training batch is drawn from one pass over the set (``n_train // world_size`` draws per process): a larger
    ``data.batch_size`` would train on smaller batches than the config (and summary.json) say. DataError."""
    per_process = n_train // world_size
    if batch_size > per_process:
        spread = f", {per_process} per process over {world_size}" if world_size > 1 else ""
        raise DataError(
            f"data.batch_size={batch_size} is larger than the training set ({n_train} clips at {source}{spread}); "
            f"set data.batch_size to at most {max(per_process, 1)} or add clips"
        )


def check_validation_set(val_set: ClipDataset, source) -> None:
    """Fit validates on ``val_set``; when none of its clips can be read it dies at its first validation, before it
    has written a checkpoint. Fit (at setup) and ``data check`` both call this: it reads clips until one loads."""
    first_bad = None
    for index in range(len(val_set)):
        try:
            val_set.load(index)
            return
        except BadFileError as err:
            val_set.skip_log.add(err)
            first_bad = first_bad or err
    if first_bad is not None:
        raise DataError(
            f"{source}: none of the {len(val_set)} validation clip(s) fit validates on can be used (e.g. {first_bad}); "
            "the validation loss needs one (`lit-snapvideo data check` lists every unreadable file)"
        )


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
    "key": int64 ()}``; ``key`` is the sample seed of ``dataset[(i, seed)]``, else ``i``. With ``low_res_size``
    also ``"low_res"``: (3, T, *low_res_size), the same clip downsampled (an upsampler's input, never padded).

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
        low_res_size: Optional[Sequence[int]] = None,
        decoded_cache_mb: float = 0,
    ):
        self.low_res_size = tuple(low_res_size) if low_res_size else None
        self.records = list(records)
        self.frames, self.size, self.pad_to = frames, tuple(size), pad_to
        self.fps_choices, self.train, self.skip_log = list(fps_choices), train, skip_log or SkipLog()
        self.is_image = [r.is_image for r in self.records]
        self._bad: set[int] = set()  # per worker: indices known to fail, never retried
        # per process: whole videos decoded once (data.decoded_cache_mb; results/profile/fit_step_parts.md)
        self._decoded: dict[int, DecodedVideo] = {}
        self._decoded_budget, self._decoded_bytes = int(decoded_cache_mb * 2**20), 0

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, rng: Optional[torch.Generator] = None) -> dict:
        """One example (``rng``: random frame rate and start, else deterministic); raises BadFileError."""
        r = self.records[index]
        if r.is_image:
            video, fps, orig_hw = read_image(r.path, self.frames, self.size)
        elif self._decoded_budget:
            video, fps, orig_hw = self._decoded_video(index).clip(self.frames, self.fps_choices, rng)
        else:
            video, fps, orig_hw = read_video(r.path, self.frames, self.size, self.fps_choices, r.fps, rng)
        example = {
            "video": pad_video(video, self.pad_to) if self.pad_to else video,
            "caption": r.caption,
            "fps": torch.tensor(fps, dtype=torch.float32),
            "orig_size": torch.tensor(orig_hw, dtype=torch.float32),
            "is_image": torch.tensor(r.is_image),
        }
        if self.low_res_size:
            example["low_res"] = downsample_video(video, self.low_res_size)
        return example

    def _decoded_video(self, index: int) -> DecodedVideo:
        """Record ``index`` decoded whole, from the cache or from its file (kept while the budget lasts)."""
        if index in self._decoded:
            return self._decoded[index]
        r = self.records[index]
        decoded = DecodedVideo.read(r.path, self.frames, self.size, r.fps)
        if self._decoded_bytes + decoded.frames.nbytes <= self._decoded_budget:
            self._decoded[index] = decoded
            self._decoded_bytes += decoded.frames.nbytes
        return decoded

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
