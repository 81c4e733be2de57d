"""Every bad input is one error line and exit status 2, no traceback (``--debug`` shows it): one table per surface
(config, data, checkpoint, sample options). Each row: the input, the fragment its line must hold.

The rows run the CLI's entry function in-process; two run it as a real process, where the whole of stderr is seen."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_overrides
from lit_snapvideo.cli import main
from lit_snapvideo.data.video import write_video
from lit_snapvideo.errors import UserError

LATIN_1 = "caf\xe9 au lait\n".encode("latin-1")  # not UTF-8: 0xe9 starts a sequence that does not continue


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def _fails(argv: list[str], capsys, fragment: str) -> str:
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert fragment in line, line
    return line


@pytest.fixture
def experiment(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("model: {preset: fit_tiny}\n")
    return path


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a file where a folder should be\n")
    return path


# ---- config: `config` rejects what `fit` would crash on ------------------------------------------------------------

CONFIG = [
    (
        "fit_patch_groups",
        ["data.size=[20,32]", "data.pad_to=[20,32]"],
        "data.frames x data.pad_to = 8 x [20, 32] does not fit model.preset=fit_tiny: FIT: patch grid",
    ),
    ("fit_frames", ["data.frames=4"], "does not fit model.preset=fit_tiny"),
    (
        "unet_levels",
        ["model.preset=unet_tiny", "data.size=[15,32]", "data.pad_to=[15,32]"],
        "does not fit model.preset=unet_tiny: UNet3D: input size (H,W)=(15,32) must be divisible by 2",
    ),
    ("unknown_preset", ["model.preset=fit_huge"], "bad value for 'model.preset': unknown backbone preset 'fit_huge'"),
    ("unknown_override", ["model.overrides.bogus=1"], "bad value for 'model.overrides'"),
    ("logging_root_is_a_file", ["logging.root={file}"], "bad value for 'logging.root'"),
    ("logging_root_inside_a_file", ["logging.root={file}/runs"], "is a file"),
    ("text_cache_inside_a_file", ["text.cache_dir={file}/cache"], "bad value for 'text.cache_dir'"),
    # before: the run was written outside logging.root
    ("experiment_climbs_out", ["logging.experiment=a/../../b"], "bad value for 'logging.experiment': 'a/../../b'"),
    ("experiment_absolute", ["logging.experiment={file}.d"], "bad value for 'logging.experiment'"),
    ("version_climbs_out", ["logging.version=../v"], "bad value for 'logging.version': '../v' (expected a name"),
]


@pytest.mark.parametrize("name,overrides,fragment", CONFIG, ids=[row[0] for row in CONFIG])
def test_bad_config(shapes_root, tmp_path, experiment, a_file, capsys, name, overrides, fragment):
    base = tiny_overrides(shapes_root, tmp_path / "runs")
    overrides = [o.format(file=a_file) for o in overrides]
    line = _fails(["config", str(experiment), *base, *overrides], capsys, fragment)
    assert line.split(": error: ")[1].startswith("command line override") and overrides[-1] in line, line


def test_bad_config_in_the_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {preset: fit_huge}\n")
    line = _fails(["config", str(path), "trainer.max_steps=3"], capsys, "bad value for 'model.preset'")
    assert line.split(": error: ")[1].startswith(f"{path}: "), line


def test_a_sample_prompt_with_a_line_break_is_refused(tmp_path, capsys):
    """Before: one video, but two lines in samples/prompts.txt (read back one prompt per line)."""
    path = tmp_path / "prompts.yaml"
    path.write_text('model: {preset: fit_tiny}\nlogging: {sample_prompts: ["a red circle", "a blue\\nsquare"]}\n')
    line = _fails(["config", str(path)], capsys, "bad value for 'logging.sample_prompts'")
    assert "'a blue\\nsquare'" in line and "without line breaks" in line, line


def test_fit_refuses_a_clip_the_backbone_cannot_take_before_writing(shapes_root, tmp_path, experiment, capsys):
    runs = tmp_path / "runs"
    _fails(
        ["fit", str(experiment), *tiny_overrides(shapes_root, runs), "data.size=[20,32]", "data.pad_to=[20,32]"],
        capsys,
        "does not fit model.preset=fit_tiny",
    )
    assert not runs.exists()


# ---- data ----------------------------------------------------------------------------------------------------------


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


def _all_bad(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.mp4").write_text("not a video\n")
    (folder / "b.mp4").write_bytes(b"x")
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return folder


def _all_bad_training(folder: Path, shapes_root: Path) -> Path:
    """:func:`_all_bad`'s three files for training beside one good validation clip: training meets them (fit
    refuses a set whose validation clips are all unreadable at setup, before any training file is read)."""
    _all_bad(folder)
    rows = csv.DictReader((shapes_root / "manifest.csv").open())
    good = next(shapes_root / r["path"] for r in rows if r["split"] == "val" and r["is_image"] == "0")
    with (folder / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [("path", "caption", "split")] + [(name, "bad", "train") for name in ("a.mp4", "b.mp4", "c.png")]
        )
        csv.writer(f).writerow((str(good), "a good clip", "val"))
    return folder


def _manifest(
    shapes_root: Path, path: Path, fps: str = "", encoding: str = "utf-8", caption: str = "", split: str = ""
) -> Path:
    """Four training rows of the shapes set; row 1 (line 3) takes the given fps, caption and split."""
    rows = list(csv.DictReader((shapes_root / "manifest.csv").open()))[:4]
    rows[1]["fps"] = fps or rows[1]["fps"]
    rows[1]["caption"] = caption or rows[1]["caption"]
    rows[1]["split"] = split or rows[1]["split"]
    for row in rows:
        row["path"] = str(shapes_root / row["path"])
    with path.open("w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _unreadable_val(shapes_root: Path, path: Path) -> Path:
    """A manifest whose one validation clip cannot be read (fit used to die at its first validation)."""
    manifest = _manifest(shapes_root, path)
    bad = path.parent / "val.mp4"
    bad.write_text("not a video\n")
    with manifest.open("a", newline="") as f:
        csv.writer(f).writerow([str(bad), "a red circle", "val"])  # the other columns empty
    return manifest


DATA = [
    ("missing_root", lambda root, tmp: tmp / "nowhere", "data.root {data} does not exist"),
    ("empty_root", lambda root, tmp: _empty(tmp / "empty"), "data set at {data} is empty"),
    (
        "all_bad_root",
        lambda root, tmp: _all_bad(tmp / "bad"),
        "none of the 1 validation clip(s) fit validates on can be used (e.g. {data}/",
    ),
    (
        "all_bad_training",
        lambda root, tmp: _all_bad_training(tmp / "bad", root),
        "all 3 files of this data set are unreadable (e.g. {data}/",
    ),
    (
        "manifest_fps_abc",
        lambda root, tmp: _manifest(root, tmp / "m.csv", fps="abc"),
        "manifest {data} line 3: fps 'abc' is not a frame rate",
    ),
    (
        "manifest_fps_negative",
        lambda root, tmp: _manifest(root, tmp / "m.csv", fps="-5"),
        "fps '-5' is not a frame rate",
    ),
    (
        "manifest_not_utf8",
        lambda root, tmp: _manifest(root, tmp / "m.csv", caption="caf\xe9", encoding="latin-1"),
        "manifest {data}: not UTF-8 text",
    ),
    (
        "manifest_split_training",
        lambda root, tmp: _manifest(root, tmp / "m.csv", split="training"),
        "manifest {data} line 3: split 'training' is not train or val",
    ),
    ("manifest_split_typo", lambda root, tmp: _manifest(root, tmp / "m.csv", split="trian"), "line 3: split 'trian'"),
    (
        "only_val_clip_unreadable",
        lambda root, tmp: _unreadable_val(root, tmp / "m.csv"),
        "{data}: none of the 1 validation clip(s) fit validates on can be used (e.g. {data.parent}/val.mp4",
    ),
]


@pytest.mark.parametrize("name,make,fragment", DATA, ids=[row[0] for row in DATA])
@pytest.mark.parametrize("command", ["fit", "data check"])
def test_bad_data(shapes_root, tmp_path, experiment, capsys, name, make, fragment, command):
    data = make(shapes_root, tmp_path)
    if command == "fit":
        argv = [
            "fit",
            str(experiment),
            *tiny_overrides(data, tmp_path / "runs", **{"trainer.max_steps": 1}),
            "--no-progress",
        ]
    else:
        argv = ["data", "check", str(data)]
    if command == "data check" and name == "all_bad_root":  # data check lists the files, then fails
        fragment = "{data}: none of its 3 file(s) can be used at 16 frames (e.g. {data}/"
    if command == "data check" and name == "all_bad_training":  # data check passes, and lists the three
        assert main(argv) == 0 and "3 file(s) would be skipped" in capsys.readouterr().out
        return
    _fails(argv, capsys, fragment.format(data=data))
    assert not (tmp_path / "runs" / "tiny").exists()  # a failed start leaves no run folder


def test_a_failed_start_keeps_an_existing_run(shapes_root, tiny_checkpoint, tmp_path, experiment, capsys):
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    overrides = tiny_overrides(
        _all_bad_training(tmp_path / "bad", shapes_root),
        tmp_path / "runs",
        **{"data.size": "[16,32]", "data.pad_to": "[16,32]", "trainer.max_steps": 4},
    )
    _fails(["fit", str(experiment), *overrides, "--no-progress"], capsys, "files of this data set are unreadable")
    assert set(before) <= {p.relative_to(run_dir) for p in run_dir.rglob("*")}  # resumed, failed, nothing removed


def _clip(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(frames)
    write_video(path, rng.integers(0, 255, (frames, 32, 48, 3), dtype=np.uint8), fps=8)
    return path


def test_data_check_counts_clips_too_short_for_the_frame_count(tmp_path, capsys, caplog):
    folder = tmp_path / "clips"
    folder.mkdir()
    _clip(folder / "long.mp4", 20)
    _clip(folder / "short.mp4", 10)
    # the long clip validates: a set whose validation clips are all too short is an error (fit's check)
    (folder / "manifest.csv").write_text("path,caption,split\nlong.mp4,a long clip,val\nshort.mp4,a short clip,train\n")
    assert main(["data", "check", str(folder)]) == 0  # the default data.frames, 16
    assert "1 file(s) would be skipped (checked at 16 frames of 36x64)" in capsys.readouterr().out
    assert "short.mp4: only 10 frame(s), need at least 16 (data.frames)" in caplog.text
    assert main(["data", "check", str(folder), "--frames", "8"]) == 0
    assert "0 file(s) would be skipped (checked at 8 frames" in capsys.readouterr().out
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        f"data: {{root: {folder}, frames: 12, size: [16, 32], pad_to: [16, 32], batch_size: 1}}\n"
        "model: {preset: unet_tiny}\n"
    )
    assert main(["data", "check", "--config", str(experiment)]) == 0  # root and frame count from the experiment
    assert "1 file(s) would be skipped (checked at 12 frames of 16x32)" in capsys.readouterr().out
    _fails(
        ["data", "check", str(folder), "--frames", "24"],
        capsys,
        f"{folder}: none of its 2 file(s) can be used at 24 frames (e.g. {folder}/",
    )
    _fails(["data", "check", str(folder), "--frames", "0"], capsys, "--frames 0: expected an integer >= 1")
    _fails(["data", "check"], capsys, "give a data ROOT or --config")


def test_a_batch_larger_than_the_training_set_is_refused(shapes_root, tmp_path, experiment, capsys):
    """Before: fit trained on batches of the set's 24 clips while summary.json said 30; data check said nothing."""
    runs = tmp_path / "runs"
    fragment = "data.batch_size=30 is larger than the training set (24 clips"
    overrides = tiny_overrides(shapes_root, runs, **{"data.batch_size": 30, "trainer.max_steps": 1})
    _fails(["fit", str(experiment), *overrides, "--no-progress"], capsys, fragment)
    assert not runs.exists()
    config = tmp_path / "big_batch.yaml"
    config.write_text(f"data: {{root: {shapes_root}, batch_size: 30}}\nmodel: {{preset: fit_tiny}}\n")
    _fails(["data", "check", "--config", str(config)], capsys, fragment)


def test_all_bad_data_in_a_worker_process_is_one_line(shapes_root, tmp_path, experiment, capsys):
    """A DataLoader worker sends its error back with the worker's traceback inside the message."""
    data = _all_bad_training(tmp_path / "bad", shapes_root)
    argv = [
        "fit",
        str(experiment),
        *tiny_overrides(data, tmp_path / "runs", **{"data.num_workers": 1}),
        "--no-progress",
    ]
    _fails(argv, capsys, "files of this data set are unreadable")


def test_a_caption_that_is_not_utf8_skips_its_file(shapes_root, tmp_path, experiment, capsys, caplog):
    folder = tmp_path / "videos"
    folder.mkdir()
    clips = sorted((shapes_root / "train").glob("*.mp4"))[:3]
    for i, clip in enumerate(clips):
        shutil.copy(clip, folder / f"clip{i}.mp4")
        (folder / f"clip{i}.txt").write_bytes(LATIN_1 if i == 1 else b"a red circle moving left\n")
    assert main(["data", "check", str(folder)]) == 0
    assert "1 file(s) would be skipped" in capsys.readouterr().out
    assert "clip1.mp4: its caption clip1.txt is not UTF-8 text (byte 3)" in caplog.text
    runs = tmp_path / "runs"
    argv = [
        "fit",
        str(experiment),
        *tiny_overrides(
            folder,
            runs,
            **{
                "trainer.max_steps": 1,
                "data.batch_size": 1,  # of the two readable clips one is held out for validation
                "logging.sample_every_n_steps": 0,
                "data.size": "[16,32]",
                "data.pad_to": "[16,32]",
            },
        ),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert '"skipped_files": 1' in (runs / "tiny" / "version_0" / "summary.json").read_text()


@pytest.mark.parametrize("folder", ["checkpoints", "samples"])
def test_a_file_where_the_run_writes_a_folder_is_one_line(shapes_root, tmp_path, experiment, capsys, folder):
    """Before: a traceback, for samples/ at the first sample step, after training had begun."""
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    run_dir.mkdir(parents=True)
    (run_dir / folder).write_text("not a folder\n")
    overrides = tiny_overrides(
        shapes_root, tmp_path / "runs", **{"trainer.max_steps": 1, "logging.sample_every_n_steps": 1}
    )
    _fails(["fit", str(experiment), *overrides, "--no-progress"], capsys, f"{run_dir / folder} is a file")
    assert [p.name for p in run_dir.iterdir()] == [folder]  # refused before anything was written


# ---- checkpoints ---------------------------------------------------------------------------------------------------

CHECKPOINT = [
    ("truncated", lambda data: data[: len(data) // 2], "cannot resume: the file is truncated or corrupt"),
    ("empty", lambda data: b"", "cannot resume: the file is truncated or corrupt"),
    ("text", lambda data: b"not a checkpoint\n", "cannot resume"),
]


@pytest.mark.parametrize("name,cut,fragment", CHECKPOINT, ids=[row[0] for row in CHECKPOINT])
def test_bad_last_checkpoint_on_resume(shapes_root, tiny_checkpoint, tmp_path, experiment, capsys, name, cut, fragment):
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(cut(last.read_bytes()))
    config = (run_dir / "config.yaml").read_bytes()
    overrides = tiny_overrides(
        shapes_root,
        tmp_path / "runs",
        **{"data.size": "[16,32]", "data.pad_to": "[16,32]", "logging.experiment": "tiny", "trainer.max_steps": 4},
    )
    line = _fails(["fit", str(experiment), *overrides, "--no-progress"], capsys, fragment)
    assert str(last) in line
    assert (run_dir / "config.yaml").read_bytes() == config


INIT_FROM = [
    ("truncated", lambda data: data[: len(data) // 2], "cannot be read as a checkpoint"),
    ("random_bytes", lambda data: np.random.default_rng(0).bytes(4096), "cannot be read as a checkpoint"),
    ("json", lambda data: b'{"state_dict": {}, "hyper_parameters": {}}\n', "cannot be read as a checkpoint"),
]


@pytest.mark.parametrize("name,make,fragment", INIT_FROM, ids=[row[0] for row in INIT_FROM])
def test_a_bad_init_from_file_is_one_line(
    shapes_root, tiny_checkpoint, tmp_path, experiment, capsys, name, make, fragment
):
    """Before: torch's many-line error (an UnpicklingError or a zip reader's RuntimeError) naming no file."""
    bad = tmp_path / f"{name}.ckpt"
    bad.write_bytes(make(tiny_checkpoint.read_bytes()))
    runs = tmp_path / "runs"
    overrides = tiny_overrides(shapes_root, runs, **{"model.init_from": str(bad), "trainer.max_steps": 1})
    _fails(["fit", str(experiment), *overrides, "--no-progress"], capsys, f"model.init_from {bad}: {fragment}")
    assert not runs.exists()


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_truncated_checkpoint_in_sample_and_evaluate(tiny_checkpoint, tmp_path, capsys, command):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    extra = ["--prompt", "a"] if command == "sample" else ["--num-videos", "1"]
    line = _fails([command, str(cut), *extra, "--out", str(tmp_path / "out")], capsys, "cannot be read")
    assert str(cut) in line


# ---- sample (and evaluate) options: refused before the checkpoint is loaded ------------------------------------------

SAMPLE = [
    ("threshold_5", ["--threshold", "5"], "--threshold 5.0: expected a percentile in (0, 1]"),
    ("threshold_0", ["--threshold", "0"], "--threshold 0.0"),
    ("fps_negative", ["--fps", "-5"], "--fps -5.0: expected a frame rate > 0"),
    ("fps_0", ["--fps", "0"], "--fps 0.0: expected a frame rate > 0"),
    ("fps_nan", ["--fps", "nan"], "--fps nan"),
    ("cfg_nan", ["--cfg", "nan"], "--cfg nan: expected a finite guidance weight"),
    ("cfg_inf", ["--cfg", "inf"], "--cfg inf"),
    ("oscillate_nan", ["--oscillate-low", "nan"], "--oscillate-low nan"),
    ("steps_0", ["--steps", "0"], "--steps and --batch-size must be >= 1"),
    ("out_inside_a_file", ["--out", "{file}/samples"], "{file} is a file, so no folder can be made there"),
    ("out_mp4_inside_a_file", ["--out", "{file}/a.mp4"], "{file} is a file"),
    ("out_is_a_file", ["--out", "{file}"], "{file} is a file"),
    ("prompts_not_utf8", ["--prompts-file", "{latin}"], "--prompts-file {latin}: not UTF-8 text (byte 3)"),
    # before: one video, two lines in prompts.txt
    ("prompt_with_a_line_break", ["--prompt", "a blue\nsquare"], "prompt 2 ('a blue\\nsquare') holds a line break"),
]


@pytest.mark.parametrize("name,options,fragment", SAMPLE, ids=[row[0] for row in SAMPLE])
def test_bad_sample_options(tiny_checkpoint, tmp_path, a_file, capsys, name, options, fragment):
    latin = tmp_path / "prompts.txt"
    latin.write_bytes(LATIN_1)
    fill = lambda text: text.format(file=a_file, latin=latin)
    argv = ["sample", str(tiny_checkpoint), "--prompt", "a red circle", "--out", str(tmp_path / "out")]
    _fails(argv + [fill(o) for o in options], capsys, fill(fragment))
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_cfg_nan(tiny_checkpoint, capsys):
    _fails(["evaluate", str(tiny_checkpoint), "--cfg", "nan"], capsys, "--cfg nan: expected a finite guidance weight")


# ---- --debug, and two rows as real processes ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_raises_the_error(tiny_checkpoint, tmp_path, where):
    argv = ["sample", str(tiny_checkpoint), "--prompt", "a", "--threshold", "5", "--out", str(tmp_path / "o")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(UserError, match="--threshold 5.0"):
        main(argv)


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["config", "{yaml}", "model.preset=fit_tiny", "data.frames=4"], "does not fit model.preset=fit_tiny"),
        (["sample", "{ckpt}", "--prompt", "a", "--fps", "0"], "--fps 0.0"),
    ],
)
def test_whole_stderr_is_one_line(tiny_checkpoint, experiment, argv, fragment):
    argv = [a.format(yaml=experiment, ckpt=tiny_checkpoint) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "lit_snapvideo", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr, proc.stderr
