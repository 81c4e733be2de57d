"""Exact resume from any step: a run stopped part-way through an epoch (by a crash, a kill or max_steps) and rerun
ends with the weights, EMA and optimiser state of the uninterrupted run, after training on the same clips in the
same order; summary.json's wall time counts every segment.

The schedule: 24 training clips in batches of 4 (an epoch is 6 steps), validation every 4 steps, last.ckpt also
every 5 steps. The run stops after step 5 (no multiple of 6 or 4), resumes and crosses two epoch boundaries."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_environment, max_state_difference, tiny_overrides
from lit_snapvideo.callbacks import read_data_trace
from lit_snapvideo.config import load_config
from lit_snapvideo.module import EDMVideoModule
from lit_snapvideo.train import fit

MAX_STEPS, STOP_AFTER = 14, 5
SCHEDULE = {
    "data.batch_size": 4,
    "trainer.max_steps": MAX_STEPS,
    "trainer.val_every_n_steps": 4,
    "trainer.checkpoint_every_n_steps": 5,
    "logging.sample_every_n_steps": 0,
    "logging.data_trace": True,
}


def _overrides(shapes_root, runs, name) -> list[str]:
    return tiny_overrides(shapes_root, runs, "fit_tiny", **SCHEDULE, **{"logging.experiment": name})


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _assert_same_run(straight: Path, resumed: Path) -> float:
    a, b = _checkpoint(straight), _checkpoint(resumed)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert any(k.startswith("ema_backbone.") for k in a["state_dict"])
    diff = max_state_difference(a, b)
    print(f"resume difference {diff:g} ({resumed.parent.name})")  # shown with pytest -s
    assert diff <= 1e-6, diff
    seen, again = read_data_trace(straight / "data_trace.tsv"), read_data_trace(resumed / "data_trace.tsv")
    assert sorted(seen) == list(range(1, MAX_STEPS + 1))
    assert again == seen  # the same clips, frame rates, crops and stream positions at every step
    return diff


@pytest.fixture(scope="module")
def straight_run(shapes_root, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("straight")
    return fit(load_config(None, _overrides(shapes_root, runs, "straight")), enable_progress_bar=False)


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_mid_epoch(shapes_root, tmp_path, straight_run, monkeypatch):
    """The crash comes in step 7: last.ckpt holds step 5, written by the every-5-steps save (Lightning restarts
    "on train batch end"), the state a kill leaves."""
    original = EDMVideoModule.on_train_batch_start

    def crash_in_step_7(self, batch, batch_idx):
        if self.global_step == 6:
            raise Crash("step 7")
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(EDMVideoModule, "on_train_batch_start", crash_in_step_7)
        with pytest.raises(Crash):
            fit(load_config(None, _overrides(shapes_root, tmp_path, "crashed")), enable_progress_bar=False)
    run_dir = tmp_path / "crashed" / "version_0"
    saved = _checkpoint(run_dir)
    assert saved["global_step"] == STOP_AFTER
    before = saved["callbacks"]["WallTime"]["seconds"]
    fit(load_config(None, _overrides(shapes_root, tmp_path, "crashed")), enable_progress_bar=False)
    _assert_same_run(straight_run, run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["wall_time_s"] > before > 0


def test_resume_after_max_steps_mid_epoch(shapes_root, tmp_path, straight_run):
    """Stopped by a smaller max_steps (last.ckpt written at the end of training), then run to the end."""
    fit(
        load_config(None, _overrides(shapes_root, tmp_path, "stopped")), enable_progress_bar=False, max_steps=STOP_AFTER
    )
    run_dir = tmp_path / "stopped" / "version_0"
    first = json.loads((run_dir / "summary.json").read_text())["wall_time_s"]
    fit(load_config(None, _overrides(shapes_root, tmp_path, "stopped")), enable_progress_bar=False)
    _assert_same_run(straight_run, run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["wall_time_s"] > first > 0


def _fit_command(shapes_root, runs: Path, name: str) -> list[str]:
    config = runs / "tiny.yaml"
    config.write_text("model: {preset: fit_tiny}\n")
    return [
        sys.executable,
        "-m",
        "lit_snapvideo",
        "fit",
        str(config),
        *_overrides(shapes_root, runs, name),
        "--no-progress",
    ]


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(shapes_root, tmp_path):
    """Real processes: an uninterrupted run; a run killed with SIGKILL in step 7 or 8 (last.ckpt holds step 5;
    the next save comes with the validation after step 8), rerun to the end."""
    env = cli_environment()
    straight = subprocess.run(
        _fit_command(shapes_root, tmp_path, "straight"), env=env, capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    run_dir = tmp_path / "killed" / "version_0"
    trace = run_dir / "data_trace.tsv"
    proc = subprocess.Popen(
        _fit_command(shapes_root, tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        # Lightning runs checkpoint callbacks last: step 6 in the trace means step 5's save is complete
        while not (trace.exists() and STOP_AFTER + 1 in read_data_trace(trace)):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before step 6"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = _checkpoint(run_dir)
    assert saved["global_step"] == STOP_AFTER, "killed too late: raise the gap between saves"
    assert not (run_dir / "summary.json").exists()
    before = saved["callbacks"]["WallTime"]["seconds"]

    started = time.monotonic()
    resumed = subprocess.run(
        _fit_command(shapes_root, tmp_path, "killed"), env=env, capture_output=True, text=True, timeout=600
    )
    elapsed = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(tmp_path / "straight" / "version_0", run_dir)
    wall = json.loads((run_dir / "summary.json").read_text())["wall_time_s"]
    assert before < wall < before + elapsed + 0.1  # the killed segment up to its checkpoint, plus the rerun


def test_a_moved_run_folder_resumes_from_its_own_newest_checkpoint(shapes_root, tmp_path):
    """2 steps, the folder moved, resumed to 4, resumed to 6 == 6 steps in one run; no last-v1/best-v1 copies (with
    them the second resume read the step-2 last.ckpt), and best.ckpt keeps the lowest validation loss."""
    schedule = {"trainer.max_steps": 6, "trainer.val_every_n_steps": 2, "logging.sample_every_n_steps": 0}

    def run(root: Path, name: str, steps: int) -> Path:
        cfg = load_config(None, tiny_overrides(shapes_root, root, **schedule, **{"logging.experiment": name}))
        return fit(cfg, enable_progress_bar=False, max_steps=steps)  # the schedule is the 6-step run's throughout

    straight = run(tmp_path / "straight", "straight", 6)
    run(tmp_path / "a", "moved", 2)
    (tmp_path / "a").rename(tmp_path / "b")
    run(tmp_path / "b", "moved", 4)
    moved = run(tmp_path / "b", "moved", 6)
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    a, b = _checkpoint(straight), _checkpoint(moved)
    assert a["global_step"] == b["global_step"] == 6
    assert max_state_difference(a, b) == 0
    state = next(v for k, v in b["callbacks"].items() if k.startswith("BestAndLastCheckpoint"))
    assert state["dirpath"] == str(moved / "checkpoints")
    assert state["best_model_path"] == str(moved / "checkpoints" / "best.ckpt")
    straight_state = next(v for k, v in a["callbacks"].items() if k.startswith("BestAndLastCheckpoint"))
    assert float(state["best_model_score"]) == float(straight_state["best_model_score"])
    assert json.loads((moved / "summary.json").read_text())["steps"] == 6
