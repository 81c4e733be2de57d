"""FSDP (``trainer.strategy=fsdp``, lit_snapvideo/sharding.py) on CPU with gloo, started the way a user starts it.

Fast, one process: the wrap policy, the precision settings, the strategy the config builds (Lightning accepts it
with a CPU accelerator), the clipping override, and sharded checkpoint folders read by the safe loader (also the
refusal of an index pickle that calls a function).

Slow, two processes (``trainer.strategy=fsdp trainer.devices=2``, Lightning's launcher): a tiny FIT trains 6 steps
with validation, sampling on every rank and sharded checkpoints; a run stopped after 3 steps and rerun resumes from
its sharded ``last.ckpt`` and ends with the uninterrupted run's weights, EMA and step (tolerance RESUME_ATOL: the
same reductions in the same order, so it is exact in practice). With AdamW (elementwise) and the same data, FSDP
follows DDP within DDP_ATOL (float sums in another order: reduce-scatter against all-reduce); LAMB is not compared,
as under FSDP each rank's LAMB takes the trust ratio of its own slice of a weight split between ranks
(docs/multinode.md).
"""

import pickle
import sys
import types
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import tiny_overrides
from test_ddp import _fit
from lit_snapvideo.config import ConfigError, load_config
from lit_snapvideo.models.fit import FIT, FITBlock
from lit_snapvideo.module import FITModule
from lit_snapvideo.module_loading import load_module
from lit_snapvideo.safe_load import CheckpointError, load_checkpoint_file
from lit_snapvideo.sharding import FSDPStrategyCPU, fsdp_strategy, mixed_precision, wrap_classes

REPO = Path(__file__).resolve().parents[1]
RESUME_ATOL = 0.0  # measured 0 (2026-12-02, torch 2.14.1, Lightning 2.6.6, 2 CPU processes)
DDP_ATOL = 1e-4  # measured 5.4e-05 (the same run); DDP against one process uses the same bound (test_ddp.py)


def _tiny_module(tmp_path, **extra) -> FITModule:
    cfg = load_config(None, tiny_overrides(tmp_path / "data", tmp_path / "runs", "fit_tiny", **extra))
    return FITModule(cfg)


# ---- one process --------------------------------------------------------------------------------------


def test_each_fit_block_and_each_backbone_is_a_unit(tmp_path):
    module = _tiny_module(tmp_path)
    assert wrap_classes(module.backbone) == {FIT, FITBlock}
    assert wrap_classes(torch.nn.Linear(2, 2)) == {torch.nn.Linear}  # a backbone without blocks: one unit


def test_mixed_precision_keeps_reduction_and_buffers_in_fp32():
    bf16 = mixed_precision("bf16-mixed")
    assert (bf16.param_dtype, bf16.reduce_dtype, bf16.buffer_dtype) == (torch.bfloat16, torch.float32, None)
    assert not bf16.cast_root_forward_inputs  # the clips reach the loss in fp32
    fp32 = mixed_precision("32-true")  # nothing cast: the float64 EMA video count stays float64
    assert (fp32.param_dtype, fp32.reduce_dtype, fp32.buffer_dtype) == (None, None, None)


def test_config_builds_a_cpu_fsdp_strategy_lightning_accepts(tmp_path):
    assert load_config(REPO / "experiments/paper/fit_3_9b.yaml").trainer.strategy == "fsdp"
    module = _tiny_module(tmp_path, **{"trainer.strategy": "fsdp"})
    strategy = fsdp_strategy(module, "32-true", "cpu")
    assert isinstance(strategy, FSDPStrategyCPU) and strategy._state_dict_type == "sharded"
    assert strategy.kwargs["ignored_modules"] == [module.text_encoder]
    assert strategy.kwargs["use_orig_params"] and not strategy.kwargs["sync_module_states"]
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_checkpointing=False)
    assert trainer.strategy is strategy  # Lightning refuses strategy="fsdp" itself on a CPU accelerator
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(None, tiny_overrides(tmp_path, tmp_path, **{"trainer.strategy": "fsdp", "model.compile": True}))


def test_clipping_goes_through_the_fsdp_root(tmp_path, monkeypatch):
    module = _tiny_module(tmp_path)
    calls, logged = [], {}
    strategy = fsdp_strategy(module, "32-true", "cpu")
    strategy.model = types.SimpleNamespace(clip_grad_norm_=lambda v: calls.append(v) or torch.tensor(3.0))
    module._trainer = types.SimpleNamespace(strategy=strategy)
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.__setitem__(name, float(value)))
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    module.configure_gradient_clipping(None, gradient_clip_val=None)  # optim.grad_clip=0: the norm, no clipping
    assert calls == [1.0, float("inf")] and logged == {"train/grad_norm": 3.0}
    with pytest.raises(ValueError, match="only 'norm'"):
        module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="value")


def _save_sharded(folder, checkpoint: dict) -> None:
    """A folder as Lightning's FSDPStrategy(state_dict_type="sharded") writes it, from one process."""
    import torch.distributed.checkpoint as dcp

    checkpoint = dict(checkpoint)
    dcp.save({"model": checkpoint.pop("state_dict")}, checkpoint_id=str(folder), no_dist=True)
    checkpoint.pop("optimizer_states", None)
    torch.save(checkpoint, folder / "meta.pt")


def test_a_sharded_folder_loads_like_the_file(tiny_checkpoint, tmp_path):
    full = load_checkpoint_file(tiny_checkpoint)
    folder = tmp_path / "last.ckpt"
    _save_sharded(folder, full)
    sharded = load_checkpoint_file(folder)
    assert sharded["global_step"] == full["global_step"] and sharded["hyper_parameters"] == full["hyper_parameters"]
    assert set(sharded["state_dict"]) == set(full["state_dict"])
    assert all(torch.equal(sharded["state_dict"][k], v) for k, v in full["state_dict"].items())
    shapes = load_checkpoint_file(folder, mmap=True)["state_dict"]  # what the resume check reads: no tensor data
    assert all(v.is_meta and v.shape == full["state_dict"][k].shape for k, v in shapes.items())
    a, b = load_module(str(tiny_checkpoint)), load_module(str(folder))  # evaluate and sample take the folder
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_an_index_that_calls_a_function_is_refused(tiny_checkpoint, tmp_path):
    folder = tmp_path / "last.ckpt"
    _save_sharded(folder, load_checkpoint_file(tiny_checkpoint))
    (folder / ".metadata").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError, match=r"refused: its .metadata pickle calls builtins.print"):
        load_checkpoint_file(folder)
    (folder / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        load_checkpoint_file(folder)


# ---- two processes ------------------------------------------------------------------------------------

STEPS, STOP_AFTER = 6, 3
FSDP = {"trainer.strategy": "fsdp", "trainer.devices": 2, "data.batch_size": 2}
SETTINGS = {
    "trainer.max_steps": STEPS,
    "trainer.val_every_n_steps": 3,
    "logging.sample_every_n_steps": 3,  # every rank samples: the EMA weights are sharded
    "model.grad_checkpointing": True,  # recomputation through the FSDP units
}


def _run(shapes_root, runs, name, **settings):  # the DDP test's launcher: the fit command in its own session
    return _fit(shapes_root, runs, name, **{**SETTINGS, **settings})


def _weights(run_dir) -> dict:
    return load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")


def _difference(a: dict, b: dict) -> float:
    assert set(a["state_dict"]) == set(b["state_dict"])
    return max(float((a["state_dict"][k].double() - b["state_dict"][k].double()).abs().max()) for k in a["state_dict"])


# FSDP on CPU processes needs gloo (tested with torch 2.14: FSDP accepts device_id=cpu there)
needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="FSDP on CPU processes needs torch.distributed with the gloo backend",
)


@pytest.mark.slow
@needs_gloo
def test_fsdp_trains_saves_sharded_and_resumes_exactly(shapes_root, tmp_path):
    full = _run(shapes_root, tmp_path, "full", **FSDP)
    assert (full / "checkpoints" / "last.ckpt" / "meta.pt").is_file()  # a sharded folder
    assert len(list((full / "checkpoints" / "last.ckpt").glob("*.distcp"))) == 2  # one shard per rank
    assert sorted(p.name for p in (full / "samples").glob("*.gif")) == ["step_000003.gif", "step_000006.gif"]
    stopped = _run(shapes_root, tmp_path, "stopped", **{**FSDP, "trainer.max_steps": STOP_AFTER})
    assert _weights(stopped)["global_step"] == STOP_AFTER
    resumed = _run(shapes_root, tmp_path, "stopped", **FSDP)  # the rerun resumes from the sharded last.ckpt
    a, b = _weights(full), _weights(resumed)
    assert a["global_step"] == b["global_step"] == STEPS
    diff = _difference(a, b)
    print(f"FSDP resume difference {diff:g}")
    assert diff <= RESUME_ATOL
    assert float(b["state_dict"]["videos_seen"]) == STEPS * 4
    summary = (resumed / "summary.json").read_text()
    assert '"world_size": 2' in summary and '"parameters": 362000' in summary  # counted before sharding


@pytest.mark.slow
@needs_gloo
def test_fsdp_follows_ddp_with_adamw(shapes_root, tmp_path):
    adamw = {"optim.name": "adamw", "optim.lr": 1e-3}
    fsdp = _weights(_run(shapes_root, tmp_path, "fsdp", **FSDP, **adamw))
    ddp = _weights(_run(shapes_root, tmp_path, "ddp", **{**FSDP, "trainer.strategy": "ddp"}, **adamw))
    diff = _difference(fsdp, ddp)  # live and EMA weights, videos_seen
    print(f"FSDP vs DDP (AdamW): weights {diff:.3g}")
    assert diff <= DDP_ATOL


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
