"""The embedded moving-shapes set: a procedurally generated, captioned video data set with ground truth.

Each clip shows one or two objects (shape, colour, size) moving in one of eight directions, straight or bouncing,
on a plain or checkered background, at a native frame rate; a tenth are still images. The caption names every
attribute (:func:`make_caption`, read back by :func:`parse_caption`), so sample quality can be scored against the
prompt without downloaded networks (:mod:`lit_snapvideo.metrics.probe`).

    generate_shapes("data/shapes", n_train, n_val, variant="full")
        -> data/shapes/{train,val}/NNNNNN.{mp4,png} + data/shapes/manifest.csv (path, caption, split, attributes)

The files are read back like user data, through :mod:`.datasets` and :mod:`.video`.
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .video import write_video

log = logging.getLogger(__name__)

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


def foreign_caption(root: str | Path, manifest: Optional[str] = None) -> Optional[str]:
    """The first caption of the data set at ``root`` that is not in the moving-shapes grammar, or None when every
    caption is (the embedded set: the probe's labels and the object metrics' plain backgrounds hold)."""
    from .datasets import load_records  # lazy: datasets reads this module's grammar

    train, val = load_records(root, manifest)
    return next((r.caption for r in train + val if not is_shapes_caption(r.caption)), None)


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
