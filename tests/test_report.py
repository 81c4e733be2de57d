"""make compare: markdown tables from run summaries, with the paper's numbers beside."""

import json

import pytest

from lit_snapvideo import paper
from lit_snapvideo.cli import main
from lit_snapvideo.report import compare_runs, sigma_report


def _run(tmp_path, name, kind, train_ms, infer_ms, metrics=None):
    run = tmp_path / name / "version_0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(
        json.dumps(
            {
                "experiment": name,
                "preset": f"{kind}_small",
                "kind": kind,
                "parameters": 2_100_000,
                "steps": 1000,
                "wall_time_s": 600.0,
                "train_ms_per_video": train_ms,
                "infer_ms_per_video_per_eval": infer_ms,
                "final_val_loss": 0.5,
            }
        )
    )
    if metrics:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_compare_table2_layout_and_ratios(tmp_path):
    fit = _run(tmp_path, "fit", "fit", 50.0, 10.0, {"probe/prompt_accuracy": 0.5})
    unet = _run(tmp_path, "unet", "unet", 150.0, 40.0)
    text = compare_runs([fit, unet], tmp_path / "ablation.md")
    assert "| fit | fit_small | 2.1M | 1000 steps | 1000 |" in text
    assert (
        "Training speed-up FIT over U-Net (ours): 3.00x (paper, FIT 500M vs U-Net 284M: "
        f"{paper.speedup('train_ms'):.2f}x)"
    ) in text
    assert f"4.00x (paper: {paper.speedup('infer_ms'):.2f}x)" in text
    row = paper.table2("fit_500m")
    assert (
        f"| {row['model']} | 500.0M | {row['fid']} | {row['fvd']} | {row['clipsim']} | {row['train_ms']} | "
        f"{row['infer_ms']} |"
    ) in text
    assert "probe/prompt_accuracy" in text and "0.5000" in text
    assert (tmp_path / "ablation.md").read_text() == text


def test_compare_names_the_budget_and_takes_speedups_from_the_first_pair(tmp_path):
    """Equal-steps pair first, then an equal-wall-clock run: its row says max_time, the ratios stay the pair's."""
    fit = _run(tmp_path, "fit", "fit", 50.0, 10.0)
    unet = _run(tmp_path, "unet", "unet", 150.0, 40.0)
    timed = _run(tmp_path, "fit_timed", "fit", 25.0, 5.0)
    summary = json.loads((timed / "summary.json").read_text())
    (timed / "summary.json").write_text(json.dumps({**summary, "max_time": "00:00:20:00", "max_steps": 9999}))
    text = compare_runs([fit, unet, timed], tmp_path / "ablation.md")
    assert "| fit_timed | fit_small | 2.1M | max_time 00:00:20:00 | 1000 |" in text
    assert "Training speed-up FIT over U-Net (ours): 3.00x" in text


def test_reports_name_the_runs_data(tmp_path):
    """The header names each run's data folder and clip shape: from summary.json, or from config.yaml for older
    summaries."""
    fit = _run(tmp_path, "fit", "fit", 50.0, 10.0)
    unet = _run(tmp_path, "unet", "unet", 150.0, 40.0)
    summary = json.loads((fit / "summary.json").read_text())
    (fit / "summary.json").write_text(json.dumps({**summary, "data_root": "data/shapes_simple", "clip": [8, 24, 40]}))
    (unet / "config.yaml").write_text("data:\n  root: /my/videos\n  frames: 16\n  pad_to: [40, 64]\n")
    text = compare_runs([fit, unet], tmp_path / "ablation.md")
    assert "CPU-scale presets on `/my/videos`, `data/shapes_simple` (16x40x64, 8x24x40 clips," in text
    assert "fit_small on `data/shapes_simple` (8x24x40 clips," in sigma_report([fit], tmp_path / "sigma.md")
    assert "on the embedded moving-shapes set" in sigma_report(
        [_run(tmp_path, "old", "fit", 1.0, 1.0)], tmp_path / "s.md"
    )


def test_sigma_report_rows(tmp_path):
    ours = _run(tmp_path, "sigma_ours", "fit", 50.0, 10.0, {"probe/prompt_accuracy": 0.75, "probe/fvd": 3.5})
    text = sigma_report([ours], tmp_path / "sigma.md")
    assert "| Ours | 1.0 | 4.0 | 1000 | 0.5000 | 0.750 | 3.500 | - | 3.07 | 27.79 | 0.2459 |" in text
    assert "| (i) original EDM | 0.5 | 1.0 | not run |" in text


def test_compare_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "x.md")]) == 2
    assert "no run summary" in capsys.readouterr().err


@pytest.mark.parametrize("name,text", [("summary.json", '{"steps": 10, "wall'), ("metrics.json", "[1, 2]\n")])
def test_compare_a_damaged_results_file_is_one_line(tmp_path, capsys, name, text):
    """Before: a JSONDecodeError traceback (a summary.json cut short by a crash, before it was written atomically)."""
    run = _run(tmp_path, "fit", "fit", 50.0, 10.0, {"probe/prompt_accuracy": 0.5})
    (run / name).write_text(text)
    assert main(["compare", str(run), "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"error: {run / name}: " in err and ("not a JSON object" in err or "not valid JSON" in err), err
    assert not (tmp_path / "x.md").exists()
