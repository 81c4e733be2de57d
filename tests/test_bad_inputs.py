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


def _manifest(shapes_root: Path, path: Path, fps: str = "", encoding: str = "utf-8", caption: str = "") -> Path:
    rows = list(csv.DictReader((shapes_root / "manifest.csv").open()))[:4]
    rows[1]["fps"] = fps or rows[1]["fps"]
    rows[1]["caption"] = caption or rows[1]["caption"]
    for row in rows:
        row["path"] = str(shapes_root / row["path"])
    with path.open("w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


DATA = [
    ("missing_root", lambda root, tmp: tmp / "nowhere", "data.root {data} does not exist"),
    ("empty_root", lambda root, tmp: _empty(tmp / "empty"), "data set at {data} is empty"),
    ("all_bad_root", lambda root, tmp: _all_bad(tmp / "bad"), "files of this data set are unreadable (e.g. {data}/"),
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
    _fails(argv, capsys, fragment.format(data=data))
    assert not (tmp_path / "runs" / "tiny").exists()  # a failed start leaves no run folder


def test_a_failed_start_keeps_an_existing_run(tiny_checkpoint, tmp_path, experiment, capsys):
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    overrides = tiny_overrides(
        _all_bad(tmp_path / "bad"),
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
    assert main(["data", "check", str(folder)]) == 0  # the default data.frames, 16
    assert "1 file(s) would be skipped (checked at 16 frames of 36x64)" in capsys.readouterr().out
    assert "short.mp4: only 10 frame(s), need at least 16 (data.frames)" in caplog.text
    assert main(["data", "check", str(folder), "--frames", "8"]) == 0
    assert "0 file(s) would be skipped (checked at 8 frames" in capsys.readouterr().out
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        f"data: {{root: {folder}, frames: 12, size: [16, 32], pad_to: [16, 32]}}\nmodel: {{preset: unet_tiny}}\n"
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


def test_all_bad_data_in_a_worker_process_is_one_line(tmp_path, experiment, capsys):
    """A DataLoader worker sends its error back with the worker's traceback inside the message."""
    data = _all_bad(tmp_path / "bad")
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
                "logging.sample_every_n_steps": 0,
                "data.size": "[16,32]",
                "data.pad_to": "[16,32]",
            },
        ),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert '"skipped_files": 1' in (runs / "tiny" / "version_0" / "summary.json").read_text()


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
