"""Shared test settings: CPU only, offline, small thread count, deterministic seeds."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub look-ups stall ~50 s each without network

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]


def cli_environment() -> dict:
    """The environment of a ``python -m lit_snapvideo`` test process: offline, one thread, this checkout first."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


CLI = [sys.executable, "-m", "lit_snapvideo"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A small moving-shapes set (real mp4 + png files), made once per test session."""
    from lit_snapvideo.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, n_train=24, n_val=4, seed=0, workers=1)
    return root


def tiny_overrides(root, run_root, preset="fit_tiny", **extra) -> list[str]:
    """Config overrides for a seconds-long CPU run of a tiny backbone on 8 x 16 x 16 clips."""
    values = {
        "model.preset": preset,
        "data.root": str(root),
        "data.frames": 8,
        "data.size": "[16,16]",
        "data.pad_to": "[16,16]",
        "data.batch_size": 2,
        "data.val_batch_size": 2,
        "data.num_workers": 0,
        "data.limit_val_clips": 2,
        "text.max_length": 8,
        "logging.root": str(run_root),
        "logging.sample_steps": 2,
        "logging.quality_every_n_steps": 0,
        "logging.sample_prompts": "[a red circle moving left on a black background]",
        "trainer.log_every_n_steps": 1,
        "optim.warmup_steps": 2,
        "text.cache_dir": str(run_root / "text_cache"),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def tiny_checkpoint(shapes_root, tmp_path_factory):
    """A real Lightning checkpoint of a 2-step fit_tiny run on 8 x 16 x 32 clips (decord needs width > 16)."""
    from lit_snapvideo.config import load_config
    from lit_snapvideo.train import fit

    run_root = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        tiny_overrides(
            shapes_root,
            run_root,
            "fit_tiny",
            **{
                "data.size": "[16,32]",
                "data.pad_to": "[16,32]",
                "trainer.max_steps": 2,
                "logging.sample_every_n_steps": 0,
                "logging.experiment": "tiny",
            },
        ),
    )
    run_dir = fit(cfg, enable_progress_bar=False)
    return run_dir / "checkpoints" / "last.ckpt"


class PlantedPayload:
    """A pickle that calls a global when loaded: harmless here (``os.getcwd``), but what the weights-only loader
    must refuse in any file it reads (a checkpoint, a cache entry)."""

    def __reduce__(self):
        return (os.getcwd, ())


def max_state_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two checkpoints over the weights (live and EMA, videos_seen) and the
    optimiser state."""
    import torch

    assert set(a["state_dict"]) == set(b["state_dict"])
    pairs = [(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]]
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        pairs += [(sa[k], sb[k]) for k in sa if torch.is_tensor(sa[k])]
    return max(float((x.double() - y.double()).abs().max()) for x, y in pairs)
