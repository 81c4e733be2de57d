"""Data pipeline: the moving-shapes generator, decoding + frame-rate resampling, images as
infinite-fps videos, padding, bad-file skipping through a real DataLoader, clear setup errors."""

import csv
import logging
import math
import shutil
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import torch
from PIL import Image

from lit_snapvideo.config import load_config
from lit_snapvideo.data import DataError, EDMDataModule, crop_padding, generate_shapes, pad_video, parse_caption
from lit_snapvideo.data.datasets import JointSampler
from lit_snapvideo.data.shapes import COLORS, DIRECTIONS, SHAPES, SIZES, make_caption
from lit_snapvideo.data.video import read_video, write_video

FRAMES, SIZE, PAD_TO = 16, (36, 64), (40, 64)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, n_train=24, n_val=6, seed=3, workers=2)
    return root


def _rows(root):
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _config(root, **data):
    overrides = [f"data.root={root}", "data.batch_size=4", "data.val_batch_size=4", "data.num_workers=0"]
    return load_config(None, overrides + [f"data.{k}={v}" for k, v in data.items()])


def _index_clip(path, n=48, fps=24, hw=(72, 128)):
    """A clip whose frame k is uniformly grey at level 5k (distinct after H.264 and colour conversion)."""
    frames = np.repeat((np.arange(n, dtype=np.uint8) * 5)[:, None, None, None], hw[0] * hw[1] * 3, 1).reshape(n, *hw, 3)
    write_video(path, frames, fps, crf=0)
    return path


def _frame_finder(path):
    """video (3, T, H, W) in [-1, 1] -> (T,) source frame indices, by the nearest grey level among
    the clip's frames decoded independently with PyAV."""
    with av.open(str(path)) as container:
        levels = torch.tensor([f.to_ndarray(format="rgb24").mean() for f in container.decode(video=0)])
    return lambda video: ((video.mean((0, 2, 3)) + 1) * 127.5)[:, None].sub(levels).abs().argmin(1)


# ---- generator ----------------------------------------------------------------------------------


def test_generator_writes_videos_decord_reads_back(shapes_root):
    rows = _rows(shapes_root)
    assert len(rows) == 30 and {r["split"] for r in rows} == {"train", "val"}
    videos = [r for r in rows if r["is_image"] == "0"]
    assert videos, "expected some video clips"
    for r in videos[:6]:
        vr = decord.VideoReader(str(shapes_root / r["path"]))
        assert len(vr) == int(r["num_frames"]) >= 16
        assert vr.get_avg_fps() == pytest.approx(float(r["fps"]))
        assert vr[0].shape == (int(r["height"]), int(r["width"]), 3)
        assert 72 <= int(r["height"]) <= 144 and 8 <= float(r["fps"]) <= 30
        assert int(r["num_frames"]) / float(r["fps"]) >= 2.0 - 1e-6
    for r in rows:
        assert parse_caption(r["caption"])["shape"] == r["shape"]
        assert r["color"] != r["background"]


def test_generator_same_seed_same_attributes(shapes_root, tmp_path):
    """Attributes depend on (seed, split, index) only: not on the set's size or the worker count."""
    generate_shapes(tmp_path / "again", n_train=8, n_val=2, seed=3, workers=1)
    generate_shapes(tmp_path / "other", n_train=8, n_val=2, seed=4, workers=1)
    reference = {r["path"]: r for r in _rows(shapes_root)}
    again, other = _rows(tmp_path / "again"), _rows(tmp_path / "other")
    assert again == [reference[r["path"]] for r in again]
    assert [r["caption"] for r in other] != [r["caption"] for r in again]


def test_simple_variant_is_one_large_object_on_a_plain_background(shapes_root, tmp_path):
    """The ablation's set; each clip keeps the full set's frame size, fps and length (drawn before the objects)."""
    generate_shapes(tmp_path / "simple", n_train=24, n_val=6, seed=3, workers=1, variant="simple")
    rows, full = _rows(tmp_path / "simple"), {r["path"]: r for r in _rows(shapes_root)}
    assert len(rows) == 30
    for r in rows:
        assert r["n_objects"] == "1" and r["size"] == "large" and r["bounce"] in ("0", "")
        assert r["background"] in ("black", "white", "gray") and r["color"] != r["background"]
        assert parse_caption(r["caption"])["objects"] == [
            {
                "size": "large",
                "color": r["color"],
                "shape": r["shape"],
                "direction": r["direction"] or None,
                "bounce": False,
            }
        ]
        same = full[r["path"]]
        assert (r["fps"], r["num_frames"], r["height"], r["width"]) == (
            same["fps"],
            same["num_frames"],
            same["height"],
            same["width"],
        )
    with pytest.raises(ValueError, match="variant 'tiny' is unknown"):
        generate_shapes(tmp_path / "bad", n_train=1, n_val=0, variant="tiny")


def test_motion_is_visible_at_loader_size(shapes_root):
    """Objects move several pixels per frame at 36x64 and the validation rate (8 fps)."""
    rows = [r for r in _rows(shapes_root) if r["is_image"] == "0" and r["n_objects"] == "1" and r["bounce"] == "0"]
    for r in rows[:4]:
        video, fps, _ = read_video(shapes_root / r["path"], FRAMES, SIZE, [8.0])
        diff = (video[:, 1:] - video[:, :-1]).abs().amax(0)  # (T-1, H, W) per-pixel change between frames
        assert (diff > 0.5).float().sum((1, 2)).mean() > 20, r["caption"]  # many pixels change each frame
        speed = float(r["speed"]) * SIZE[0] / fps  # frame heights/s -> px per output frame
        assert speed > 1.5


def test_parse_caption_round_trip():
    cases = [
        [{"size": "small", "color": "red", "shape": "circle", "direction": "left"}],
        [
            {"size": "large", "color": "cyan", "shape": "triangle", "direction": "up-left", "bounce": True},
            {"size": "small", "color": "orange", "shape": "square", "direction": "down-right"},
        ],
        [{"size": "large", "color": "white", "shape": "square", "direction": None}],
    ]
    for objects in cases:
        caption = make_caption(objects, "checkered")
        parsed = parse_caption(caption)
        assert parsed["background"] == "checkered"
        assert [(o["size"], o["color"], o["shape"], o["direction"], o["bounce"]) for o in parsed["objects"]] == [
            (o["size"], o["color"], o["shape"], o["direction"], o.get("bounce", False)) for o in objects
        ]
    assert make_caption(cases[0], "black") == "a small red circle moving left on a black background"
    assert "up and to the left" in make_caption(cases[1], "gray")
    assert len(SHAPES) >= 3 and len(COLORS) == 8 and len(DIRECTIONS) == 8 and set(SIZES) == {"small", "large"}
    with pytest.raises(ValueError, match="not a moving-shapes caption"):
        parse_caption("a photo of a dog")


# ---- video pipeline -----------------------------------------------------------------------------


def test_frame_rate_resampling_picks_the_right_frames(tmp_path):
    clip = _index_clip(tmp_path / "index.mp4", n=48, fps=24)
    frame_of = _frame_finder(clip)
    video, fps, orig = read_video(clip, FRAMES, SIZE, [8.0])  # every 3rd frame from 0
    assert fps == 8.0 and orig == (72, 128) and video.shape == (3, FRAMES, *SIZE)
    assert frame_of(video).tolist() == list(range(0, 48, 3))
    video, fps, _ = read_video(clip, FRAMES, SIZE, [12.0, 24.0])  # validation: the first feasible choice
    assert fps == 12.0 and frame_of(video).tolist() == list(range(0, 32, 2))
    video, fps, _ = read_video(clip, FRAMES, SIZE, [4.0, 48.0])  # nothing fits (too long / above native): native
    assert fps == 24.0 and frame_of(video).tolist() == list(range(16))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # training: random rate and start, spacing always native / fps
        video, fps, _ = read_video(clip, FRAMES, SIZE, [6.0, 8.0, 12.0, 24.0], rng=g)
        idx = frame_of(video)
        assert fps in (8.0, 12.0, 24.0)  # 6 fps would need 61 source frames
        assert (idx.diff() == round(24 / fps)).all() and idx[-1] < 48


def test_loader_shape_dtype_range_and_padding(shapes_root):
    dm = EDMDataModule(_config(shapes_root))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    video = batch["video"]
    assert video.shape == (4, 3, FRAMES, *PAD_TO) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.1
    assert (video[..., :2, :] == 0).all() and (video[..., -2:, :] == 0).all()  # 36 -> 40: 2 rows each side
    assert torch.equal(pad_video(crop_padding(video, SIZE), PAD_TO), video)
    assert isinstance(batch["caption"], list) and all(isinstance(c, str) for c in batch["caption"])
    assert batch["fps"].dtype == torch.float32 and batch["fps"].shape == (4,)
    assert batch["orig_size"].shape == (4, 2) and (batch["orig_size"] >= 72).all()
    assert batch["is_image"].dtype == torch.bool


def test_validation_loader_is_deterministic(shapes_root):
    dm = EDMDataModule(_config(shapes_root, limit_val_clips=5, val_fps=8))
    dm.setup("validate")
    first = list(dm.val_dataloader())
    second = list(dm.val_dataloader())
    assert sum(len(b["caption"]) for b in first) == 5
    for a, b in zip(first, second):
        assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"]
    fps = torch.cat([b["fps"] for b in first])
    is_image = torch.cat([b["is_image"] for b in first])
    assert (fps[~is_image] == 8.0).all() and torch.isinf(fps[is_image]).all()


def test_images_are_still_infinite_fps_videos(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(tmp_path / "still.png")
    (tmp_path / "still.txt").write_text("a still picture")
    dm = EDMDataModule(_config(tmp_path, images_as_videos=False))  # the flag is the module's business
    dm.setup("fit")
    example = dm.train_set[0]
    assert example["is_image"].item() is True and math.isinf(example["fps"].item())
    frames = example["video"]
    assert frames.shape == (3, FRAMES, *SIZE) and (frames == frames[:, :1]).all()
    assert example["orig_size"].tolist() == [90.0, 160.0] and example["caption"] == "a still picture"


def test_joint_sampler_mixes_images_at_the_configured_fraction():
    is_image = [i % 5 == 0 for i in range(100)]  # 20 % images in the data
    sampler = JointSampler(is_image, image_fraction=0.5, seed=0)
    passes = [[index for index, _ in sampler] for _ in range(20)]
    share = np.mean([is_image[i] for indices in passes for i in indices])
    assert all(len(p) == 100 for p in passes) and 0.45 < share < 0.55
    assert passes[0] != passes[1]  # a fresh draw each pass
    assert all(not is_image[i] for i, _ in JointSampler(is_image, image_fraction=0.0))
    assert all(is_image[i] for i, _ in JointSampler(is_image, image_fraction=1.0))
    assert len(list(JointSampler([True, True], image_fraction=0.1))) == 2  # only images exist: all draws are images


def test_training_stream_is_resumable_and_worker_independent(shapes_root):
    """The same draws (indices, frame rates, starts) whatever the worker count, and a datamodule
    restored from a saved stream position continues exactly where the first one stopped."""

    def stream(workers, position=0, batches=3):
        dm = EDMDataModule(_config(shapes_root, num_workers=workers))
        dm.load_state_dict({"stream_position": position})
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        return [next(loader) for _ in range(batches)]

    straight, threaded, resumed = stream(0, batches=4), stream(2, batches=4), stream(0, position=8, batches=2)
    for a, b in zip(straight, threaded):
        assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"]
    for a, b in zip(straight[2:], resumed):  # batch size 4: position 8 is the third batch
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["fps"], b["fps"])
    assert len({float(f) for b in straight for f in b["fps"]}) > 1  # frame rates really vary


# ---- bad input ----------------------------------------------------------------------------------


@pytest.fixture
def bad_folder(tmp_path):
    good = _index_clip(tmp_path / "good.mp4", n=40, fps=24)
    for name in ("good2", "good3"):
        shutil.copy(good, tmp_path / f"{name}.mp4")
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    (tmp_path / "zero.mp4").write_bytes(b"")
    _index_clip(tmp_path / "one_frame.mp4", n=1)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    rows = [
        ("good.mp4", "good one"),
        ("good2.mp4", "good two"),
        ("good3.mp4", "good three"),
        ("truncated.mp4", "bad"),
        ("text.mp4", "bad"),
        ("zero.mp4", "bad"),
        ("one_frame.mp4", "bad"),
        ("corrupt.png", "bad"),
        ("missing.mp4", "bad"),
    ]
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption", "split"])
        writer.writerows([(p, c, "train") for p, c in rows] + [("good.mp4", "val clip", "val")])
    return tmp_path


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_counted_and_batches_still_come(bad_folder, workers, caplog):
    dm = EDMDataModule(_config(bad_folder, num_workers=workers, image_fraction=0.3, batch_size=3))
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        batches = []
        for _ in range(4):  # several epochs: every bad file is met by some worker
            batches += list(dm.train_dataloader())
    assert batches and all(b["video"].shape == (3, 3, FRAMES, *PAD_TO) for b in batches)
    assert {c for b in batches for c in b["caption"]} <= {"good one", "good two", "good three"}
    reasons = dm.skip_log.reasons()
    assert dm.skipped_files() == len(reasons) == 6, reasons  # each bad file counted once, whichever worker met it
    assert any("only 1 frame" in r for p, r in reasons.items() if p.endswith("one_frame.mp4"))
    assert any("not found" in r for p, r in reasons.items() if p.endswith("missing.mp4"))
    assert any("0 bytes" in r for p, r in reasons.items() if p.endswith("zero.mp4"))
    if workers == 0:  # workers' log records do not reach caplog; the markers above count them
        skip_lines = [r.getMessage() for r in caplog.records if "skipping bad file" in r.getMessage()]
        assert len(skip_lines) == 6 and all("\n" not in line for line in skip_lines)


def test_empty_data_set_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no videos here")
    dm = EDMDataModule(_config(tmp_path))
    with pytest.raises(DataError, match=rf"data set at {tmp_path} is empty: no video \(.mp4"):
        dm.setup("fit")


def test_manifest_without_required_columns_is_one_clear_error(tmp_path):
    (tmp_path / "clips.csv").write_text("file,text\na.mp4,hello\n")
    dm = EDMDataModule(_config(tmp_path, manifest="clips.csv"))
    with pytest.raises(DataError, match=r"clips.csv lacks required column\(s\) path, caption .*found: file, text"):
        dm.setup("fit")
    assert issubclass(DataError, ValueError)


def test_folder_with_captions_csv_and_holdout(tmp_path):
    clip = _index_clip(tmp_path / "a.mp4", n=20, fps=10)
    names = [f"clip{i:02d}.mp4" for i in range(40)]
    for name in names:
        shutil.copy(clip, tmp_path / name)
    (tmp_path / "a.mp4").unlink()
    (tmp_path / "captions.csv").write_text("path,caption\n" + "".join(f"{n},caption {n}\n" for n in names))
    dm = EDMDataModule(_config(tmp_path))
    dm.setup("fit")
    n_train, n_val = len(dm.train_set), len(dm.val_set)
    assert n_train + n_val == 40 and 1 <= n_val <= 8
    assert {r.caption for r in dm.train_set.records} | {r.caption for r in dm.val_set.records} == {
        f"caption {n}" for n in names
    }
    assert not {r.path for r in dm.train_set.records} & {r.path for r in dm.val_set.records}


def test_captions_csv_rows_for_missing_files_are_one_warning_and_counted(tmp_path, caplog):
    clip = _index_clip(tmp_path / "a.mp4", n=20, fps=10)
    missing = ["gone1.mp4", "gone2.mp4", "sub/gone3.mp4", "gone4.mp4"]
    (tmp_path / "notes.txt").write_text("not a clip\n")
    rows = ["a.mp4"] + missing + ["notes.txt"]
    (tmp_path / "captions.csv").write_text("path,caption\n" + "".join(f"{n},caption {n}\n" for n in rows))
    dm = EDMDataModule(_config(tmp_path))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert {r.path for r in dm.train_set.records + dm.val_set.records} == {str(clip.resolve())}
    lines = [r.getMessage() for r in caplog.records if "captions.csv" in r.getMessage()]
    assert lines == [
        f"{tmp_path / 'captions.csv'}: 5 row(s) name no video or image file under {tmp_path}, skipped: "
        "gone1.mp4, gone2.mp4, sub/gone3.mp4, ..."
    ]
    assert dm.skipped_files() == 5
    assert not [r for r in caplog.records if "skipping bad file" in r.getMessage()]  # one line, not one per row


def test_a_path_listed_twice_in_captions_csv_is_one_warning(tmp_path, caplog):
    """Before: the last row's caption won without a word."""
    for name in ("a.mp4", "b.mp4"):
        _index_clip(tmp_path / name, n=20, fps=10)
    (tmp_path / "captions.csv").write_text("path,caption\na.mp4,first\nb.mp4,bee\n./a.mp4,second\n")
    dm = EDMDataModule(_config(tmp_path))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    captions = {Path(r.path).name: r.caption for r in dm.train_set.records + dm.val_set.records}
    assert captions == {"a.mp4": "second", "b.mp4": "bee"}
    lines = [r.getMessage() for r in caplog.records if "listed" in r.getMessage()]
    assert lines == [f"{tmp_path / 'captions.csv'}: a.mp4 is listed 2 times; the last row's caption is used"], lines


def test_prepare_data_generates_the_default_set_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.n_train=3", "data.n_val=1", "data.num_workers=0"])
    EDMDataModule(cfg).prepare_data()
    assert len(_rows(tmp_path / "data" / "shapes")) == 4
    simple = load_config(None, ["data.root=data/shapes_simple", "data.n_train=3", "data.n_val=1", "data.num_workers=0"])
    EDMDataModule(simple).prepare_data()
    assert {r["n_objects"] for r in _rows(tmp_path / "data" / "shapes_simple")} == {"1"}
    user = tmp_path / "mine"
    user.mkdir()
    EDMDataModule(_config(user)).prepare_data()  # a user's root is never written to
    assert list(user.iterdir()) == []


def test_the_hash_hold_out_always_leaves_a_training_record():
    """Without a split column ~5 % of paths (by hash) are held out; a small set whose every path hashes into the
    hold-out still trains on all but one (CI met it: two clips in a temporary folder whose name hashed both out)."""
    from lit_snapvideo.data.datasets import Record, _held_out, split_records

    held = [f"/data/clip_{i}.mp4" for i in (2, 19, 30)]
    assert all(_held_out(p) for p in held) and not _held_out("/data/clip_0.mp4")
    records = [Record(p, "a clip") for p in held]
    train, val = split_records(records)
    assert [r.path for r in train] == held[:2] and [r.path for r in val] == held[2:]
    mixed = [Record("/data/clip_0.mp4", "a clip"), *records[:1]]  # the hash decides when it leaves a training record
    assert [[r.path for r in part] for part in split_records(mixed)] == [["/data/clip_0.mp4"], [held[0]]]
    one = [Record(held[0], "a clip")]
    assert split_records(one) == (one, one)  # a one-record set is used for both, as before


@pytest.mark.parametrize("train", [True, False])
def test_decoded_cache_gives_the_same_examples_as_decoding_each_draw(shapes_root, train):
    """data.decoded_cache_mb: whole videos decoded once give exactly the frames (and rate, size) a per-draw decode
    gives, for random training draws and for validation; only as many videos as fit the budget are kept."""
    from lit_snapvideo.data.datasets import ClipDataset, load_records

    records = [r for r in load_records(shapes_root)[0] if not r.is_image][:6]
    common = dict(frames=8, size=(16, 24), fps_choices=[4.0, 8.0, 12.0], train=train)
    plain = ClipDataset(records, **common)
    cached = ClipDataset(records, decoded_cache_mb=1, **common)
    small = ClipDataset(records, decoded_cache_mb=0.05, **common)  # room for about one video
    for round_ in range(2):  # the second round reads from the cache
        for i in range(len(records)):
            key = (i, 100 * round_ + i) if train else i
            want = plain[key]
            for dataset in (cached, small):
                got = dataset[key]
                assert torch.equal(got["video"], want["video"]), (round_, i)
                assert got["fps"] == want["fps"] and torch.equal(got["orig_size"], want["orig_size"])
    assert len(cached._decoded) == len(records)
    assert 1 <= len(small._decoded) < len(records) and small._decoded_bytes <= 0.05 * 2**20
