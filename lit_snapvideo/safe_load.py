"""``torch.load`` that runs no code: tensors and plain containers only, and one error line for a refused file.

    ckpt = load_checkpoint_file("runs/fit/version_0/checkpoints/last.ckpt")   # dict of tensors, numbers, strings

Checkpoints, the caches and resume all load through here (every ``torch.load`` is weights-only: a checkpoint is someone else's pickle).
A cache file (text embeddings, FVD statistics, the probe) is read with :func:`read_cache_entry` and written with
:func:`save_atomic`: an entry that fails to load or validate is one warning naming it, then recomputed and replaced.
A sharded checkpoint (``trainer.strategy=fsdp``: a folder of per-rank shards, PyTorch distributed-checkpoint format,
plus Lightning's ``meta.pt``) loads as the same dict, its shards assembled into whole tensors; its index
(``.metadata``, a pickle) is read by the same weights-only unpickler, allowing only the index's own classes.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from .errors import UserError, one_line

log = logging.getLogger(__name__)


class CheckpointError(UserError, ValueError):
    """A checkpoint that is refused (unsafe pickle, foreign or partial weights): one line naming the file."""


def load_checkpoint_file(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
    hint: str = "lit-snapvideo loads tensors and plain containers only",
) -> Any:
    """``torch.load`` of tensors and plain containers only (``weights_only``): a pickle can run code on load.

    Everything ``fit`` writes (tensors, dicts, lists, numbers, strings) is on torch's default allow-list, so no
    extra global is allowed. A file that needs one raises :class:`CheckpointError` naming the file and the global.
    Unreadable files raise torch's own errors (an UnpicklingError cut to one line).

    A folder is read as a sharded checkpoint (:func:`load_sharded_checkpoint`); ``mmap`` then reads no tensor data
    and gives meta tensors of the saved shapes (all a key and shape check needs)."""
    if Path(path).is_dir():
        return load_sharded_checkpoint(path, map_location, shapes_only=mmap, hint=hint)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # the weights-only unpickler stopped; torch's message is many lines
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a torch.save pickle at all (a text file, a raw pickle): unreadable, not refused
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
            raise pickle.UnpicklingError(detail.group(1) if detail else "weights-only load failed") from None
        raise CheckpointError(
            f"{path}: refused: its pickle calls {found.group(1)}, which weights-only loading "
            f"does not allow (it could run code); {hint}"
        ) from None


def unreadable_reason(err: BaseException) -> str:
    """Why torch could not read a cut or foreign file, short: the first sentence of its error's first line (torch's
    messages run to many lines of advice and name no file; the caller names it)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]


def read_cache_entry(
    path: str | os.PathLike, problem: Callable[[Any], Optional[str]], what: str, redo: str
) -> Optional[Any]:
    """The content of cache file ``path``, or None (the caller recomputes it and :func:`save_atomic` replaces it).

    A missing file is None in silence. A file that does not load weights-only (a planted payload, half a file) or
    that ``problem(entry)`` rejects (it returns why, or None for a usable entry) is None after one warning
    ``"<what> <path>: <why>; <redo>"``: a cache is never trusted and never a reason to stop."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        entry = load_checkpoint_file(path, "cpu", hint=f"delete it and {redo}")
        why = problem(entry)
    except Exception as err:  # unsafe, half-written or damaged
        why = f"unreadable ({one_line(err)})"
    if why:
        log.warning("%s %s: %s; %s", what, path, why, redo)
        return None
    return entry


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then a rename: a concurrent reader (another rank, another
    run) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Keys of the floating-point tensors in ``state`` that hold a NaN or inf (meta tensors hold no values)."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.is_meta and not bool(v.isfinite().all())
    ]


def require_finite(state: Mapping[str, Any], path: str | os.PathLike, what: str = "checkpoint") -> None:
    """CheckpointError naming ``path`` and the tensors when any weight is NaN or inf: such weights sample black
    videos and score NaN, so they are refused at load, not discovered in a results file."""
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise CheckpointError(
            f"{what} {path}: {len(bad)} {'tensor holds' if len(bad) == 1 else 'tensors hold'} NaN or inf ({shown}); "
            "the run diverged before this save: use an earlier checkpoint"
        )


# Lightning's file of everything in a sharded checkpoint but the weights and optimiser states
SHARDED_META = "meta.pt"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """A folder as FSDPStrategy(state_dict_type="sharded") writes it: ``meta.pt`` and the ``.metadata`` index."""
    return (Path(path) / SHARDED_META).is_file() and (Path(path) / ".metadata").is_file()


# what the index of a distributed checkpoint (``.metadata``) may name: its own record classes and torch's dtypes
INDEX_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "ChunkStorageMetadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a layout from its name
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _IndexUnpickler(pickle.Unpickler):
    """Python's documented way to restrict a pickle ("Restricting Globals"): it may name only INDEX_CLASSES and
    torch dtypes, so it can build the index's records and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        import importlib

        allowed = name in INDEX_CLASSES.get(module, ())
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")
        return getattr(importlib.import_module(module), name)


def _read_index(path: Path, hint: str) -> Any:
    """The ``.metadata`` pickle of a distributed checkpoint, through :class:`_IndexUnpickler`."""
    try:
        return _IndexUnpickler(io.BytesIO((path / ".metadata").read_bytes())).load()
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise pickle.UnpicklingError(f"{path}/.metadata: {str(err).strip() or 'not a pickle'}") from None
        raise CheckpointError(
            f"{path}: refused: its .metadata pickle calls {found.group(1)}, which lit-snapvideo does not allow "
            f"(it could run code); {hint}"
        ) from None


def load_sharded_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", shapes_only: bool = False, hint: str = ""
) -> dict:
    """A sharded checkpoint folder as one checkpoint dict: ``meta.pt`` (hyperparameters, step, callbacks' states)
    plus ``state_dict`` of whole tensors assembled from every rank's shard (``model.*`` keys of the folder); the
    optimiser states are left out (resuming is Lightning's FSDPStrategy's job). ``shapes_only``: meta tensors of the
    saved shapes, no tensor data read. Every read is weights-only."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    hint = hint or "lit-snapvideo loads tensors and plain containers only"
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path}: a folder, but not a sharded checkpoint (no {SHARDED_META} and .metadata)")
    meta = load_checkpoint_file(path / SHARDED_META, "cpu", hint=hint)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: {SHARDED_META} does not hold a checkpoint dict")
    index = _read_index(path, hint)
    entries = getattr(index, "state_dict_metadata", None)
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: its .metadata is not a distributed-checkpoint index")
    model_keys = [k for k in entries if k.startswith("model.")]
    if shapes_only:
        state = {
            k[len("model.") :]: torch.empty(tuple(v.size), dtype=v.properties.dtype, device="meta")
            for k, v in entries.items()
            if k in model_keys and isinstance(v, TensorStorageMetadata)
        }
        return {**meta, "state_dict": state}

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            return index

    class SafePlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:  # DCP's own loads these with pickle
            raise CheckpointError(f"{path}: refused: {read_item.dest_index.fqn} is a pickled object, not a tensor")

    loaded: dict = {}
    _load_state_dict(loaded, storage_reader=SafeReader(path), planner=SafePlanner(keys=set(model_keys)), no_dist=True)
    model = loaded.get("model", {})
    flat = {k[len("model.") :]: v for k, v in loaded.items() if k.startswith("model.")}  # flattened or nested
    state = {**flat, **model} if isinstance(model, dict) else flat
    return {**meta, "state_dict": {k: v.to(map_location) for k, v in state.items()}}
