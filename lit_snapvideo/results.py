"""Results files (summary.json, metrics.json) as strict JSON, written atomically.

    write_json_atomic(run_dir / "metrics.json", metrics)     # NonFiniteResultError naming the key of a NaN
    summary = read_json_object(run_dir / "summary.json")      # UserError naming a damaged file

``json.dumps`` writes NaN and Infinity by default, which no JSON parser other than Python's reads, and a NaN
metric is no result: a NaN or inf raises :class:`NonFiniteResultError` naming the file and the keys, unless the
caller asks for ``null`` in their place (``nonfinite="null"``, with a warning). The file is written to a
temporary name beside it and renamed over it, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from .errors import UserError

log = logging.getLogger("lit_snapvideo")


class NonFiniteResultError(UserError, ValueError):
    """A result holds NaN or inf: one line naming the file and the keys."""


def _plain(value: Any) -> Any:
    """Numbers of numpy / torch (0-d arrays, scalars) as Python floats or ints; containers element-wise."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # a numpy or torch scalar
        return value.item()
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return float(value)  # the default=float of the kit's earlier writers


def nonfinite_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys (``[i]`` for list items) of every NaN or inf in ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return [prefix or "(the value)"]
    if isinstance(value, dict):
        return [k for key, v in value.items() for k in nonfinite_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, list):
        return [k for i, v in enumerate(value) for k in nonfinite_keys(v, f"{prefix}[{i}]")]
    return []


def _nulled(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulled(v) for v in value]
    return value


def read_json_object(path: str | os.PathLike) -> dict:
    """A results file's JSON object; UserError naming the file when it is damaged (not text, not JSON, not an
    object: a file cut short before the writes were atomic). FileNotFoundError when there is none."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:  # OSError: e.g. a folder of that name
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: not valid JSON ({reason})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a JSON object (a {type(value).__name__})")
    return value


def write_json_atomic(path: str | os.PathLike, data: Any, nonfinite: str = "error") -> Path:
    """Write ``data`` to ``path`` as strict JSON (indent 2), atomically. ``nonfinite``: ``"error"`` raises
    :class:`NonFiniteResultError` for a NaN or inf (nothing is written); ``"null"`` writes null in its place
    with a warning naming the keys."""
    path = Path(path)
    data = _plain(data)
    bad = nonfinite_keys(data)
    if bad and nonfinite == "null":
        log.warning("%s: %s not finite, written as null", path, ", ".join(bad))
        data = _nulled(data)
    elif bad:
        raise NonFiniteResultError(
            f"{path}: not written: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} NaN or inf, which is no "
            "result (and not JSON)"
        )
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
