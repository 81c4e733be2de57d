"""`lit-snapvideo sample`: real checkpoint in, decodable mp4 files and a GIF grid out; clear errors."""

import subprocess
import sys

import decord
import pytest

from lit_snapvideo.cli import main


def test_sample_writes_decodable_mp4_and_grid(tiny_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "a red circle moving left on a black background\n\na blue square moving up on a white background\n"
    )
    out = tmp_path / "samples"
    rc = main(
        [
            "sample",
            str(tiny_checkpoint),
            "--prompts-file",
            str(prompts),
            "--prompt",
            "a green triangle moving down",
            "--steps",
            "3",
            "--cfg",
            "2",
            "--threshold",
            "0.995",
            "--oscillate-low",
            "1",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    files = sorted(out.glob("*.mp4"))
    assert [f.name for f in files] == ["000.mp4", "001.mp4", "002.mp4"]
    for f in files:
        reader = decord.VideoReader(str(f))
        assert len(reader) == 8 and reader[0].shape == (16, 32, 3)
    assert (out / "grid.gif").read_bytes()[:6] == b"GIF89a"
    assert (out / "prompts.txt").read_text().splitlines()[0] == "a green triangle moving down"  # --prompt first


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", " "], "prompt 1 is empty"),
        ([], "no prompt given"),
        (["--prompt", "x", "--steps", "0"], "--steps"),
    ],
)
def test_sample_bad_prompts(tiny_checkpoint, tmp_path, capsys, args, message):
    assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_sample_bad_checkpoints(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.ckpt"), "--prompt", "x"]) == 2
    assert "file not found" in capsys.readouterr().err
    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("hello")
    assert main(["sample", str(not_ckpt), "--prompt", "x"]) == 2
    assert "cannot be read as a lit-snapvideo checkpoint" in capsys.readouterr().err
    import torch

    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, other)  # another kind of Lightning checkpoint
    assert main(["sample", str(other), "--prompt", "x"]) == 2
    assert "not a lit-snapvideo checkpoint" in capsys.readouterr().err


def test_sample_cli_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lit_snapvideo", "sample", str(tmp_path / "x.ckpt"), "--prompt", "a"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
