"""Throughput benchmark (issue 7): tables and sweep written with their columns, memory and time guards, FLOP
counting, and the FIT/U-Net ratios against the paper's Table 2."""

import csv
import time

import pytest
from torch import nn

from lit_snapvideo import paper
from lit_snapvideo.bench import (
    SCALING_COLUMNS,
    THROUGHPUT_COLUMNS,
    BenchSettings,
    OverTimeBudget,
    estimate_memory,
    plan_preset,
    run_bench,
    run_scaling,
    speedups,
    time_repeats,
)
from lit_snapvideo.cli import main
from lit_snapvideo.models.presets import forward_flops

TINY = dict(presets=["fit_tiny", "unet_tiny"], frames=8, size=(16, 16), sample_steps=2, threads=1)


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_bench_on_tiny_presets_writes_both_tables(tmp_path):
    rows = run_bench(BenchSettings(batch_size=2, **TINY), tmp_path, command="pytest", log=lambda _: None)
    columns, table = read_csv(tmp_path / "throughput.csv")
    assert columns == THROUGHPUT_COLUMNS
    assert [r["preset"] for r in table] == ["fit_tiny", "unet_tiny"]
    for row in rows:
        assert row["notes"] == ""  # every phase measured
        for phase in ("train", "eval", "sample"):
            assert 0 < row[f"{phase}_q1_ms"] <= row[f"{phase}_ms"] <= row[f"{phase}_q3_ms"]
            assert row[f"{phase}_tflops"] > 0 and row[f"{phase}_mfu"] > 0
            assert row[f"peak_mem_{phase}_gib"] > 0  # weights + working memory of a fresh process
        assert row["memory_kind"] == "cpu_peak_rss_above_imports"
        assert row["batch"] == 2 and row["sample_evals"] == 3
    # FIT trains with an extra no-grad self-conditioning forward: 4 forward-equivalents against the U-Net's 3
    fit, unet = rows
    assert fit["work"]["train"] == pytest.approx(4 * fit["work"]["eval"])
    assert unet["work"]["train"] == pytest.approx(3 * unet["work"]["eval"])
    md = (tmp_path / "throughput.md").read_text()
    for needed in (
        "Hardware:",
        "torch 2.",
        "thread(s)",
        "Precision: fp32",
        "batch sizes: fit_tiny 2, unet_tiny 2",
        "Load average",
        "Paper train (A100)",
        "matmul probe",
        "| `fit_tiny` |",
    ):
        assert needed in md, needed


def test_scaling_sweep_writes_csv_and_plot(tmp_path):
    settings = BenchSettings(isolate=False, **TINY)
    run_scaling(settings, tmp_path, frames_list=(4, 8), sizes=((16, 16), (16, 32)), log=lambda _: None)
    columns, rows = read_csv(tmp_path / "scaling.csv")
    assert columns == SCALING_COLUMNS
    # 2 presets x (frames 4, 8 at 16x16; frames 16 at 16x16 and 16x32) x (eval, train)
    assert len(rows) == 2 * 4 * 2
    assert {(r["frames"], r["height"], r["width"]) for r in rows} == {
        ("4", "16", "16"),
        ("8", "16", "16"),
        ("16", "16", "16"),
        ("16", "16", "32"),
    }
    assert all(float(r["ms"]) > 0 and float(r["peak_mem_gib"]) > 0 for r in rows)
    # the counted cost grows with the clip, for both architectures
    for preset in ("fit_tiny", "unet_tiny"):
        gflops = {(r["frames"], r["width"]): float(r["fwd_gflops_per_video"]) for r in rows if r["preset"] == preset}
        assert gflops[("4", "16")] < gflops[("8", "16")] < gflops[("16", "16")] < gflops[("16", "32")]
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_guard_skips_oversized_preset_with_its_estimate():
    settings = BenchSettings(presets=["fit_3_9b"], available_gib=23.0)
    plan = plan_preset("fit_3_9b", settings)
    assert "train" not in plan["run_phases"]
    train_note = next(n for n in plan["notes"] if n.startswith("train skipped"))
    needed = float(train_note.split("needs ~")[1].split(" GiB")[0])
    assert needed > 60  # 4.0B fp32 parameters x (weights, grads, 2 optimiser moments) alone is 60 GiB
    assert "23.0 GiB available" in train_note


def test_memory_guard_note_reaches_the_table(tmp_path):
    settings = BenchSettings(presets=["unet_tiny"], frames=8, size=(16, 16), available_gib=1e-4, peak_tflops=1.0)
    rows = run_bench(settings, tmp_path, log=lambda _: None)
    assert rows[0].get("train_ms") is None
    md = (tmp_path / "throughput.md").read_text()
    assert "train skipped: needs ~" in md and "0.0 GiB available" in md and "the given peak 1 TFLOP/s" in md


def test_memory_estimate_counts_optimizer_states():
    params = 500.55e6  # fit_500m at text width 1024 (models/presets.py)
    est = estimate_memory("fit_500m", 1, 16, (40, 64))
    assert est["train"] > 16 * params > est["eval"] > 4 * params
    assert est["sample"] > est["eval"]  # the CFG batch is doubled


def test_linear_flops_match_2mnk():
    m_rows, k, n = 3 * 2 * 4, 8, 5  # x (1, 3, T=2, H=4, W=k) -> m = 3*2*4 rows of length k

    class LinearOnVideo(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(k, n, bias=False)

        def forward(self, x, c_noise, cond, self_cond=None):
            return self.linear(x), None

    assert forward_flops(LinearOnVideo(), frames=2, size=(4, k), text_dim=16) == 2 * m_rows * n * k


def test_time_budget_skips_a_phase_that_cannot_finish():
    assert len(time_repeats(lambda: None, "cpu", warmup=1, repeats=5, budget_s=10)) == 5
    with pytest.raises(OverTimeBudget, match="repeats need"):
        time_repeats(lambda: time.sleep(0.05), "cpu", warmup=1, repeats=5, budget_s=0.1)


def test_time_budget_skips_before_building_what_cannot_finish(tmp_path):
    # a 1 GFLOP/s "peak": fit_tiny's 6 training steps need far more than the 1 s budget, so nothing is built
    settings = BenchSettings(
        presets=["fit_tiny"],
        frames=8,
        size=(16, 16),
        batch_size=64,
        peak_tflops=1e-3,
        time_budget_s=1.0,
        phases=("train",),
    )
    (row,) = run_bench(settings, tmp_path, log=lambda _: None)
    assert row.get("train_ms") is None
    assert "train skipped: needs over" in row["notes"] and "(the matmul probe)" in row["notes"]


def test_speedups_use_paper_table2_ratios():
    rows = [
        {"preset": "fit_small", "train_ms": 10.0, "eval_ms": 2.0, "sample_ms": 30.0},
        {"preset": "unet_small", "train_ms": 25.0, "eval_ms": 9.0, "sample_ms": 90.0},
    ]
    (ratio,) = speedups(rows)
    assert (ratio["train"], ratio["eval"], ratio["sample"]) == (2.5, 4.5, 3.0)
    assert ratio["paper_train"] == pytest.approx(paper.speedup("train_ms"))  # FIT 500M vs U-Net 284M
    assert ratio["paper_eval"] == pytest.approx(paper.speedup("infer_ms"))


def test_speedups_pair_eager_with_eager_and_compiled_with_compiled():
    rows = [
        {"preset": "fit_small", "compile": False, "train_ms": 10.0, "eval_ms": 2.0, "sample_ms": 30.0},
        {"preset": "fit_small", "compile": True, "train_ms": 8.0, "eval_ms": 1.0, "sample_ms": 20.0},
        {"preset": "unet_small", "compile": False, "train_ms": 25.0, "eval_ms": 9.0, "sample_ms": 90.0},
        {"preset": "unet_small", "compile": True, "train_ms": 20.0, "eval_ms": 3.0, "sample_ms": 40.0},
    ]
    eager, compiled = speedups(rows)
    assert not eager["compiled"] and (eager["train"], eager["eval"]) == (2.5, 4.5)
    assert compiled["compiled"] and (compiled["train"], compiled["eval"]) == (2.5, 3.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats", "3"], "repeats must be >= 5"),
        (["--batch", "fit_small=x"], "expected PRESET=N"),
        (["--presets", "fit_huge"], "unknown preset"),
        (["--phases", "eval,infer"], "unknown phase"),
    ],
)
def test_cli_rejects_bad_options(args, message, capsys, tmp_path):
    assert main(["bench", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_bench_trains_and_evaluates(tmp_path):
    """--compile passes a torch.compile'd backbone into the training loss; that wrapper has no truth value, which
    once failed every compiled train phase (found on the GPU machine: "UNet3D does not support len()").
    --compile-rows gives each preset an eager and a compiled row, with the compile time in the notes."""
    rows = run_bench(
        BenchSettings(batch_size=2, compile_rows=True, phases=("eval", "train"), **TINY),
        tmp_path,
        command="pytest",
        log=lambda _: None,
    )
    assert [(r["preset"], r["compile"]) for r in rows] == [
        ("fit_tiny", False),
        ("fit_tiny", True),
        ("unet_tiny", False),
        ("unet_tiny", True),
    ]
    for row in rows:
        assert "failed" not in row["notes"], row["notes"]
        assert row["train_ms"] > 0 and row["eval_ms"] > 0
        assert ("train: compile + first call" in row["notes"]) == row["compile"]
    md = (tmp_path / "throughput.md").read_text()
    assert "| `fit_tiny` |" in md and "| `fit_tiny` compiled |" in md
