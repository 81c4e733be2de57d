"""The paper's sampling sweeps (issue 20, Fig. 5 and Fig. 6) on a tiny checkpoint: CSV columns and the PNG."""

import csv

import pytest

from lit_snapvideo.cli import main
from lit_snapvideo.sweeps import COLUMNS, CPU_MAX_STEPS, run_sweep, sweep_values

PROBE = {"steps": 3, "batch_size": 4, "max_train": 16}


@pytest.mark.parametrize("kind, values, swept", [("cfg", [0, 2, 8], "cfg_scale"), ("steps", [2, 3], "steps")])
def test_sweep_writes_csv_and_png(kind, values, swept, tiny_checkpoint, tmp_path):
    run_sweep(
        [str(tiny_checkpoint)],
        kind,
        values,
        num_videos=2,
        steps=2,
        batch_size=2,
        out_dir=tmp_path,
        device="cpu",
        probe_cache=str(tmp_path / "probe"),
        probe_kwargs=PROBE,
        log=lambda _: None,
    )
    with open(tmp_path / f"sweep_{kind}.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [float(r[swept]) for r in rows] == values
    for r in rows:
        assert r["run"] == "tiny" and r["num_videos"] == "2"
        assert 0 <= float(r["prompt_accuracy"]) <= 1 and float(r["probe_fvd"]) >= 0
        assert r["fvd"] == "" and r["clipsim"] == ""  # no detector files given
    assert (tmp_path / f"sweep_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steps_sweep_is_capped_on_the_cpu():
    said = []
    points = sweep_values("steps", None, "cpu", log=said.append)
    assert max(points) == CPU_MAX_STEPS and "capped at 256" in said[0] and "512, 1024" in said[0]
    assert max(sweep_values("steps", None, "cuda")) == 1024 and len(sweep_values("cfg", None, "cpu")) == 15


@pytest.mark.parametrize(
    "args, message",
    [
        (["cfg", "CKPT", "--values", "-1"], "must be finite and >= 0"),
        (["steps", "CKPT", "--values", "2.5"], "whole number >= 1"),
        (["cfg", "CKPT", "--num-videos", "0"], "must be >= 1"),
        (["cfg", "CKPT", "--clip-model", "ViT-B-32"], "needs both"),
        (["cfg", "CKPT", "--fvd-detector", "missing.pt"], "file not found"),
        (["cfg", "missing.ckpt"], "missing.ckpt: file not found"),
    ],
)
def test_cli_rejects_bad_input(args, message, tiny_checkpoint, capsys, tmp_path):
    args = [str(tiny_checkpoint) if a == "CKPT" else a for a in args]
    assert main(["sweep", *args, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_nan_metric_is_an_empty_csv_cell(tmp_path):
    """Before: a NaN (direction_accuracy of still prompts, a diverged run) was written as 'nan' in the results CSV."""
    from lit_snapvideo.sweeps import write_rows

    path = tmp_path / "sweep.csv"
    write_rows([{"run": "a", "probe_fvd": float("nan"), "prompt_accuracy": float("inf"), "steps": 4}], path)
    row = next(csv.DictReader(path.open()))
    assert (row["probe_fvd"], row["prompt_accuracy"], row["steps"]) == ("", "", "4")
