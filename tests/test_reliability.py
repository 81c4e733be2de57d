"""Runs that cannot be silently corrupted (issue 29): one writer per run folder, resume from the run's own newest
checkpoint wherever the folder is, a checkpoint and summary.json at SIGTERM / SIGINT, no NaN in results, caches
that are checked. docs/reliability.md lists each promise with its test here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLI, cli_environment, tiny_overrides
from lit_snapvideo.cli import main
from lit_snapvideo.run_lock import LOCK_NAME, FolderLock, RunInUseError

FAST = {"logging.sample_every_n_steps": 0, "trainer.val_every_n_steps": 100}


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def experiment(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("model: {preset: fit_tiny}\n")
    return path


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process that holds the lock at ``path`` until it is killed (it prints 'held' once it has it)."""
    code = (
        "import sys, time; from lit_snapvideo.run_lock import FolderLock; "
        f"FolderLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_environment(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---- one writer per run folder ---------------------------------------------------------------------------------


def test_a_second_fit_of_a_locked_run_is_refused(shapes_root, tmp_path, experiment, capsys):
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    holder = _hold_lock(run_dir / LOCK_NAME)
    try:
        overrides = tiny_overrides(shapes_root, tmp_path / "runs", **FAST, **{"trainer.max_steps": 1})
        assert main(["fit", str(experiment), *overrides, "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait()
    line = _error_line(capsys.readouterr().err)
    assert f"{run_dir}: in use by another lit-snapvideo process (pid {holder.pid}" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # the refused start wrote nothing


def test_a_stale_lock_is_taken_over_and_released(tmp_path, caplog):
    """The holder died (kill -9 keeps no OS lock): its pid file is taken over with a log line, removed on release."""
    path = tmp_path / "run" / LOCK_NAME
    path.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(dead.stdout)
    with caplog.at_level("INFO", logger="lit_snapvideo"), FolderLock(path):
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):  # held: a second taker is refused
            FolderLock(path).acquire()
    assert f"taking over a stale lock of pid {dead.stdout.strip()}" in caplog.text
    assert not path.exists()


def _fit_process(shapes_root, runs: Path, experiment: Path, *extra: str, steps: int = 1) -> subprocess.Popen:
    overrides = tiny_overrides(shapes_root, runs, **FAST, **{"trainer.max_steps": steps})
    return subprocess.Popen(
        [*CLI, "fit", str(experiment), *overrides, "--no-progress", *extra],
        env=cli_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_fits_at_once(shapes_root, tmp_path, experiment):
    """Real processes started together: of two fits of one run one is refused; two --new-version runs take two
    numbers (before the lock both took version_1)."""
    runs = tmp_path / "runs"
    same = [_fit_process(shapes_root, runs, experiment, steps=20) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in same]
    codes = sorted(p.returncode for p in same)
    assert codes == [0, 2], outputs
    refused = next(err for p, (_, err) in zip(same, outputs) if p.returncode == 2)
    assert f"{runs / 'tiny' / 'version_0'}: in use by another lit-snapvideo process (pid " in _error_line(refused)

    fresh = [_fit_process(shapes_root, runs, experiment, "--new-version") for _ in range(2)]
    for p in fresh:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert sorted(p.name for p in (runs / "tiny").iterdir()) == ["version_0", "version_1", "version_2"]
    for version in ("version_1", "version_2"):
        assert (runs / "tiny" / version / "summary.json").is_file()
        assert not (runs / "tiny" / version / LOCK_NAME).exists()
