"""``torch.load`` that runs no code: tensors and plain containers only, and one error line for a refused file.

    ckpt = load_checkpoint_file("runs/fit/version_0/checkpoints/last.ckpt")   # dict of tensors, numbers, strings

Checkpoints, the probe cache and resume all load through here (every ``torch.load`` is weights-only: a checkpoint is someone else's pickle).
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from .errors import UserError


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
    Unreadable files raise torch's own errors (an UnpicklingError cut to one line)."""
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
