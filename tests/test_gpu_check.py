"""gpu-check (issue 20): the dry run runs every stage at tiny sizes on the CPU and writes every promised file."""

import json

import pytest

from lit_snapvideo.cli import main
from lit_snapvideo.gpu_check import PROMISED, STAGES, CheckSettings, max_time, run_check


def test_dry_run_writes_every_promised_file(shapes_root, tmp_path):
    check = run_check(
        CheckSettings(out=tmp_path / "out", dry_run=True, data_root=str(shapes_root), work_dir=str(tmp_path / "work")),
        log=lambda _: None,
    )
    assert [(r["stage"], r["status"]) for r in check.stages] == [(s, "done") for s in STAGES], check.stages
    for name in PROMISED:
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    for kind in ("fit", "unet"):
        run = tmp_path / "out" / "ablation_runs" / kind / "version_0"
        assert json.loads((run / "metrics.json").read_text())["probe/fvd"] >= 0
    md = (tmp_path / "out" / "throughput_b8_b64.md").read_text()
    assert "Not measured yet" in md and "| `fit_tiny` | 4 | on |" in md and "paper train (A100)" in md
    assert "eval skipped: needs ~" in md  # the presets stage's memory guard, forced to trip in the dry run
    upsampler = next(line for line in md.splitlines() if line.startswith("| `fit_up_tiny`"))  # the upsampler stage
    assert upsampler.startswith("| `fit_up_tiny` at 8x32x64 | 1 |"), upsampler  # at its own clip, batch 1
    assert "gpu-check runs (fit:" in (tmp_path / "out" / "ablation.md").read_text()


def test_budget_skips_stages_that_cannot_start(tmp_path):
    check = run_check(CheckSettings(out=tmp_path, dry_run=True, budget_s=1, stages=("ablation",)), log=lambda _: None)
    assert check.stages[0]["status"] == "skipped" and "budget left" in check.stages[0]["notes"]
    assert "Not run" in (tmp_path / "ablation.md").read_text()


def test_max_time_format():
    assert max_time(90) == "00:00:01:30" and max_time(3725.4) == "00:01:02:05"


@pytest.mark.parametrize("args, message", [(["--stages", "eval"], "unknown stage"), (["--budget", "0"], "must be > 0")])
def test_cli_rejects_bad_options(args, message, capsys, tmp_path):
    assert main(["gpu-check", "--dry-run", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
