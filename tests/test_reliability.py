"""Runs that cannot be silently corrupted (issue 29): one writer per run folder, resume from the run's own newest
checkpoint wherever the folder is, a checkpoint and summary.json at SIGTERM / SIGINT, no NaN in results, caches
that are checked. docs/reliability.md lists each promise with its test here."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CLI, cli_environment, max_state_difference, tiny_overrides
from lit_snapvideo.callbacks import read_data_trace
from lit_snapvideo.cli import main
from lit_snapvideo.config import load_config
from lit_snapvideo.run_lock import LOCK_NAME, FolderLock, RunInUseError
from lit_snapvideo.train import fit

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


def test_options_before_the_overrides_as_the_readme_writes_them(shapes_root, tmp_path, experiment):
    """`fit CFG --new-version key=value` (before: argparse stopped at the option, "unrecognized arguments")."""
    overrides = tiny_overrides(shapes_root, tmp_path / "runs", **FAST, **{"trainer.max_steps": 1})
    assert main(["fit", str(experiment), "--new-version", "--no-progress", *overrides]) == 0
    assert (tmp_path / "runs" / "tiny" / "version_0" / "summary.json").is_file()


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


# ---- signals: a checkpoint at the next step boundary, summary.json, a non-zero exit -----------------------------

STOP_SCHEDULE = {
    "trainer.max_steps": 12,
    "trainer.val_every_n_steps": 5,
    "logging.sample_every_n_steps": 0,
    "logging.data_trace": True,
}


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(shapes_root, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("uninterrupted")
    overrides = tiny_overrides(shapes_root, runs, **STOP_SCHEDULE, **{"logging.experiment": "straight"})
    return fit(load_config(None, overrides), enable_progress_bar=False)


@pytest.mark.parametrize(
    "signum,status,step",
    [(signal.SIGTERM, 143, 3), (signal.SIGINT, 130, 3), (signal.SIGTERM, 143, 5)],
    ids=["SIGTERM", "SIGINT", "SIGTERM_before_a_validation"],
)
def test_a_signal_in_a_step_stops_after_it(
    shapes_root, tmp_path, experiment, uninterrupted, capsys, monkeypatch, signum, status, step
):
    """In-process (fast): the signal comes in a step (from the process itself); fit saves that step (step 5:
    after its validation), writes summary.json with stopped_by and returns 128 + the signal."""
    from lit_snapvideo.module import EDMVideoModule

    original = EDMVideoModule.on_train_batch_start

    def signal_in_step(self, batch, batch_idx):
        if self.global_step == step - 1:
            os.kill(os.getpid(), signum)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(EDMVideoModule, "on_train_batch_start", signal_in_step)
    overrides = tiny_overrides(shapes_root, tmp_path / "runs", **STOP_SCHEDULE)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert main(["fit", str(experiment), *overrides, "--no-progress"]) == status
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back after training
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == signal.Signals(signum).name and summary["steps"] == step
    assert _last(run_dir)["global_step"] == step
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"lit-snapvideo fit: stopped by {signal.Signals(signum).name} at step {step}; "), line
    assert not (run_dir / LOCK_NAME).exists()
    if step == STOP_SCHEDULE["trainer.val_every_n_steps"]:  # the save after a validation resumes exactly too
        assert summary["final_val_loss"] is not None
        monkeypatch.undo()
        assert main(["fit", str(experiment), *overrides, "--no-progress"]) == 0
        assert max_state_difference(_last(uninterrupted), _last(run_dir)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_step_writes_the_summary_and_exits_non_zero(
    shapes_root, tmp_path, experiment, uninterrupted, signum, status
):
    """A real process signalled after its 3rd step: it saves the step it is in, writes summary.json with
    stopped_by, prints one line with the command that resumes it and exits 128 + the signal; that rerun ends
    exactly as the uninterrupted run (before: SIGTERM exited 0, with no checkpoint at the signal and no summary)."""
    overrides = tiny_overrides(shapes_root, tmp_path / "runs", **STOP_SCHEDULE)
    command = [*CLI, "fit", str(experiment), *overrides, "--no-progress"]
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    trace = run_dir / "data_trace.tsv"
    proc = subprocess.Popen(command, env=cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (trace.exists() and 3 in read_data_trace(trace)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.01)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    saved = _last(run_dir)
    assert summary["stopped_by"] == signal.Signals(signum).name
    assert 3 <= summary["steps"] == saved["global_step"] < STOP_SCHEDULE["trainer.max_steps"]
    assert max(read_data_trace(trace)) == saved["global_step"]  # stopped after the step it was in
    lines = [line for line in err.splitlines() if line.startswith("lit-snapvideo fit: stopped by")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"at step {saved['global_step']}; {run_dir / 'checkpoints' / 'last.ckpt'} holds that step" in lines[0]
    again = lines[0].split("resume with: ", 1)[1]
    assert again.startswith("lit-snapvideo fit ") and str(experiment) in again

    rerun = subprocess.run(command, env=cli_environment(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    a, b = _last(uninterrupted), _last(run_dir)
    assert a["global_step"] == b["global_step"] == STOP_SCHEDULE["trainer.max_steps"]
    assert max_state_difference(a, b) == 0
    assert read_data_trace(trace) == read_data_trace(uninterrupted / "data_trace.tsv")
    assert json.loads((run_dir / "summary.json").read_text())["stopped_by"] is None


# ---- a checkpoint is data, not a plan ---------------------------------------------------------------------------


def _with_config(tiny_checkpoint: Path, path: Path, **changes) -> Path:
    """A copy of the tiny checkpoint whose stored config has ``changes`` (dotted keys); its weights stay fit_tiny's."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["cfg"])
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    ckpt["hyper_parameters"]["cfg"] = OmegaConf.to_container(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def _command(command: str, checkpoint: Path, tmp_path: Path) -> list[str]:
    extra = ["--prompt", "a red circle"] if command == "sample" else ["--num-videos", "1"]
    return [command, str(checkpoint), *extra, "--out", str(tmp_path / "out"), "--steps", "1"]


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_a_config_that_does_not_fit_the_weights_is_refused_before_a_model_is_built(
    tiny_checkpoint, tmp_path, capsys, monkeypatch, command
):
    """Before: the stored config's model was built first, so a small file asking for
    model.overrides.latent_dim=2048 took sample to 3.1 GB before the refusal."""
    from lit_snapvideo import module as module_lib
    from lit_snapvideo import module_loading

    built = []
    build = module_lib.build_backbone

    def recording_build(*args, **kwargs):
        backbone = build(*args, **kwargs)
        built.append(next(backbone.parameters()).device.type)
        return backbone

    for builder in (module_lib, module_loading):  # the module itself, and the meta-device shape check
        monkeypatch.setattr(builder, "build_backbone", recording_build)
    huge = _with_config(tiny_checkpoint, tmp_path / "huge.ckpt", **{"model.overrides.latent_dim": 2048})
    assert main(_command(command, huge, tmp_path)) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{huge}: the weights do not fit its config (model.preset=fit_tiny): " in line, line
    assert "of the wrong shape (backbone." in line and "2048" in line, line
    assert built == ["meta"]  # the shapes were compared on the meta device, and nothing real was built


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_sample_and_evaluate_write_nothing_where_the_checkpoint_config_says(
    tiny_checkpoint, tmp_path, monkeypatch, command
):
    """Before: the stored text.cache_dir made sample create folders and write embeddings where the file said."""
    from lit_snapvideo import evaluate

    elsewhere = tmp_path / "elsewhere"
    stored = {"text.cache_dir": str(elsewhere / "text"), "logging.root": str(elsewhere / "runs")}
    checkpoint = _with_config(tiny_checkpoint, tmp_path / "run" / "checkpoints" / "last.ckpt", **stored)
    monkeypatch.setattr(evaluate, "denoising_check", lambda module: {})  # not what is checked here
    monkeypatch.setattr(evaluate, "foreign_caption", lambda root, manifest: "no probe here")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(_command(command, checkpoint, tmp_path)) == 0
    assert not elsewhere.exists()
    assert (tmp_path / "cwd" / ".cache" / "text_embeddings").is_dir()  # the kit's default, the reader's own


# ---- numbers: no NaN or inf reaches a results file -------------------------------------------------------------


def _with_nan_weight(tiny_checkpoint: Path, path: Path) -> str:
    """A copy of the tiny checkpoint whose first EMA weight holds a NaN (a run that diverged before its save)."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if k.startswith("ema_backbone.") and v.is_floating_point())
    ckpt["state_dict"][key].view(-1)[0] = float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return key


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_nan_weights_in_a_checkpoint_are_one_line(tiny_checkpoint, tmp_path, capsys, command):
    """Before: NaN EMA weights sampled black videos with exit 0 and metrics.json held NaN."""
    bad = tmp_path / "run" / "checkpoints" / "last.ckpt"
    key = _with_nan_weight(tiny_checkpoint, bad)
    extra = ["--prompt", "a red circle"] if command == "sample" else ["--num-videos", "1"]
    assert main([command, str(bad), *extra, "--out", str(tmp_path / "out"), "--steps", "1"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"checkpoint {bad}: 1 tensor holds NaN or inf ({key})" in line, line
    assert not (tmp_path / "out").exists()


def test_resume_from_nan_weights_is_refused(shapes_root, tiny_checkpoint, tmp_path, experiment, capsys):
    import shutil

    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    _with_nan_weight(tiny_checkpoint, last)
    overrides = tiny_overrides(
        shapes_root,
        tmp_path / "runs",
        **{"data.size": "[16,32]", "data.pad_to": "[16,32]", "logging.experiment": "tiny", "trainer.max_steps": 4},
    )
    assert main(["fit", str(experiment), *overrides, "--no-progress"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"cannot resume from {last}: 1 tensor holds NaN or inf" in line, line


def test_resume_over_a_damaged_summary_rewrites_it(shapes_root, tiny_checkpoint, tmp_path, experiment, caplog):
    """Before: a summary.json cut short failed every later resume at the end of training (a JSONDecodeError)."""
    import shutil

    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    summary = run_dir / "summary.json"
    summary.write_text('{"steps": 2, "wall_ti')
    overrides = tiny_overrides(
        shapes_root,
        tmp_path / "runs",
        **FAST,
        **{"data.size": "[16,32]", "data.pad_to": "[16,32]", "logging.experiment": "tiny", "trainer.max_steps": 3},
    )
    with caplog.at_level("WARNING", logger="lit_snapvideo"):
        assert main(["fit", str(experiment), *overrides, "--no-progress"]) == 0
    assert _strict_json(summary)["steps"] == 3
    assert f"{summary}: not valid JSON (Unterminated string" in caplog.text


def test_a_results_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """summary.json and metrics.json go to a temporary file and are renamed over the old one: a write that fails
    (here the rename) leaves the old file as it was and no temporary file beside it."""
    from lit_snapvideo import results

    path = tmp_path / "summary.json"
    results.write_json_atomic(path, {"steps": 1})

    def failing_rename(src, dst):
        raise OSError("No space left on device")

    monkeypatch.setattr(results.os, "replace", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        results.write_json_atomic(path, {"steps": 2})
    assert _strict_json(path) == {"steps": 1} and list(tmp_path.iterdir()) == [path]


def _strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_metrics_json_is_strict_json_with_null_for_an_undefined_metric(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    """Before: a NaN metric was written as NaN, which no JSON parser but Python's reads."""
    from lit_snapvideo import evaluate

    def nan_check(module):  # forces the fault: a metric without a value
        return {"denoise/zero_mse": float("nan"), "denoise/mse_sigma_1": 0.5}

    monkeypatch.setattr(evaluate, "denoising_check", nan_check)
    monkeypatch.setattr(evaluate, "foreign_caption", lambda root, manifest: "no probe here")
    out = tmp_path / "metrics.json"
    with caplog.at_level("WARNING"):
        metrics = evaluate.evaluate_checkpoint(
            str(tiny_checkpoint), num_videos=1, steps=1, out=str(out), progress=False
        )
    saved = _strict_json(out)
    assert saved["denoise/zero_mse"] is None and saved["denoise/mse_sigma_1"] == 0.5
    assert metrics["denoise/zero_mse"] is None  # what it returns is what it wrote
    warned = [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()]
    assert warned == [f"{out}: denoise/zero_mse not finite, written as null"], warned
