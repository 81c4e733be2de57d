"""Checkpoints you can trust: weights-only loading (a pickle runs no code), strict keys, refused resumes.

Every refusal is exit status 2 and one error line that names the file; nothing is written, nothing is run."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from lit_snapvideo.cli import main
from lit_snapvideo.module import CheckpointError, UNetModule
from lit_snapvideo.module_loading import load_module


class Payload:
    """Unpickling this creates the folder ``marker``: stands in for any code a malicious pickle could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def _real(tiny_checkpoint) -> dict:
    return torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)


def _error_line(err: str, path: Path) -> str:
    """The one error line of a refusal; it names ``path``."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    return lines[0]


def test_real_checkpoint_needs_no_global_beyond_torchs_allow_list(tiny_checkpoint):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tiny_checkpoint) == []
    assert load_module(str(tiny_checkpoint)).strict_loading


@pytest.mark.parametrize("command", [["sample", "--prompt", "a red circle"], ["evaluate", "--num-videos", "1"]])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tiny_checkpoint, tmp_path, capsys, command):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({**_real(tiny_checkpoint), "extra": Payload(marker)}, evil)  # a real checkpoint, plus the payload
    assert main([command[0], str(evil), *command[1:], "--out", str(tmp_path / "out")]) == 2
    line = _error_line(capsys.readouterr().err, evil)
    assert "refused" in line and "os.makedirs" in line
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the payload is live: a plain unpickling of it runs it
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.is_dir()


def test_malicious_checkpoint_stderr_is_one_line(tiny_checkpoint, tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({**_real(tiny_checkpoint), "extra": Payload(marker)}, evil)
    proc = subprocess.run(
        [sys.executable, "-m", "lit_snapvideo", "sample", str(evil), "--prompt", "a", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and str(evil) in proc.stderr, proc.stderr
    assert not marker.exists()


def test_probe_cache_with_payload_is_refused(tmp_path):
    from lit_snapvideo.metrics.probe import Probe, load_probe

    marker = tmp_path / "payload_ran"
    probe = Probe()
    cached = tmp_path / "cache" / "0123456789abcdef.pt"
    cached.parent.mkdir()
    torch.save(
        {"version": 1, "config": probe.config, "state_dict": probe.state_dict(), "meta": {}, "extra": Payload(marker)},
        cached,
    )
    with pytest.raises(CheckpointError) as err:
        load_probe(cached)
    message = str(err.value)
    assert "\n" not in message and str(cached) in message and "refused" in message and "delete it" in message
    assert not marker.exists()


def _unet_weights(ckpt: dict) -> dict:
    cfg = {**ckpt["hyper_parameters"]["cfg"]}
    cfg["model"] = {**cfg["model"], "preset": "unet_tiny"}
    return {k: v for k, v in UNetModule(cfg).state_dict().items() if not k.startswith("text_encoder.")}


def _wrong_shape(state: dict) -> dict:
    key = next(k for k in state if k.startswith("backbone.") and state[k].ndim == 2)
    return {**state, key: torch.zeros(state[key].shape[0] + 1, state[key].shape[1])}


@pytest.mark.parametrize(
    "name,edit,expected",
    [
        ("empty", lambda ckpt: {}, "keys missing (videos_seen, backbone."),
        ("unet_under_fit_config", _unet_weights, "unexpected"),
        (
            "no_ema",
            lambda ckpt: {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("ema_backbone.")},
            "keys missing (ema_backbone.",
        ),
        ("wrong_shape", lambda ckpt: _wrong_shape(ckpt["state_dict"]), "key of the wrong shape (backbone."),
    ],
)
def test_foreign_or_partial_weights_are_refused(tiny_checkpoint, tmp_path, capsys, name, edit, expected):
    ckpt = _real(tiny_checkpoint)
    bad = tmp_path / f"{name}.ckpt"
    torch.save({**ckpt, "state_dict": edit(ckpt)}, bad)
    assert main(["sample", str(bad), "--prompt", "a red circle", "--out", str(tmp_path / "out")]) == 2
    line = _error_line(capsys.readouterr().err, bad)
    assert expected in line and "model.preset=fit_tiny" in line
    assert not (tmp_path / "out").exists()


def test_module_loads_strictly_except_the_text_tower(tiny_checkpoint):
    """The path Lightning's resume takes: ``load_state_dict(strict=module.strict_loading)``."""
    module = load_module(str(tiny_checkpoint))
    state = _real(tiny_checkpoint)["state_dict"]
    assert not any(k.startswith("text_encoder.") for k in state)
    module.load_state_dict(state, strict=module.strict_loading)  # the text tower is the one allowed absence
    ema_key = next(k for k in state if k.startswith("ema_backbone."))
    with pytest.raises(CheckpointError, match=f"1 key missing \\({ema_key}\\)"):
        module.load_state_dict({k: v for k, v in state.items() if k != ema_key}, strict=module.strict_loading)
    with pytest.raises(CheckpointError, match="1 key unexpected \\(backbone.stray\\)"):
        module.load_state_dict({**state, "backbone.stray": torch.zeros(1)}, strict=module.strict_loading)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "case,preset,expected",
    [
        ("other_preset", "unet_tiny", "trained with model.preset=fit_tiny"),
        ("no_ema", "fit_tiny", "keys missing (ema_backbone."),
        ("payload", "fit_tiny", "refused"),
    ],
)
def test_refused_resume_leaves_the_run_as_it_was(
    shapes_root, tiny_checkpoint, tmp_path, capsys, case, preset, expected
):
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)  # a copy: the session fixture stays intact
    last = run_dir / "checkpoints" / "last.ckpt"
    marker = tmp_path / "payload_ran"
    if case != "other_preset":
        ckpt = _real(last)
        if case == "no_ema":
            ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("ema_backbone.")}
        else:
            ckpt["extra"] = Payload(marker)
        torch.save(ckpt, last)
    assert (run_dir / "config.yaml").is_file()
    before = _snapshot(run_dir)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("trainer:\n  max_steps: 4\n")
    overrides = tiny_overrides(
        shapes_root,
        tmp_path / "runs",
        preset,
        **{
            "data.size": "[16,32]",
            "data.pad_to": "[16,32]",
            "logging.sample_every_n_steps": 0,
            "logging.experiment": "tiny",
        },
    )
    assert main(["fit", str(experiment), *overrides, "--no-progress"]) == 2
    assert expected in _error_line(capsys.readouterr().err, last)
    assert _snapshot(run_dir) == before and not marker.exists()
