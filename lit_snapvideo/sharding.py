"""``trainer.strategy=fsdp``: Lightning's FSDPStrategy (PyTorch FSDP) set up for the backbones of this kit.

    strategy = fsdp_strategy(module, precision="bf16-mixed", accelerator="gpu")   # what train.build_trainer passes

* Wrapping: one FSDP unit per backbone block (``FITBlock`` for FIT) and one per backbone (its embeddings, norms and
  output layer), for the live and the EMA backbone alike. The two backbones are built alike, so their units shard
  alike: every rank holds the same slice of a weight in both, and the EMA update runs on the local shards with no
  communication (the EMA copy is sharded: parameters x 4 bytes / world size per rank).
* The frozen text tower is left out of FSDP (``ignored_modules``): it is small, runs outside any training step
  (captions are cached, samples are drawn from callbacks), and stays whole on every rank.
* Precision: ``bf16-mixed`` computes in bf16 (parameters cast to bf16 inside each unit, Lightning's bf16 autocast
  around the step) and keeps the weights and the gradient reduction in fp32; the buffers (EMA video count,
  float64) and the batch are never cast. ``32-true``: no casting at all.
* Activation checkpointing: ``model.grad_checkpointing`` (FIT recomputes each block in backward; under FSDP each
  block is an FSDP unit, so the recomputation gathers its weights again).
* Checkpoints: sharded (``state_dict_type="sharded"``): ``last.ckpt`` and ``best.ckpt`` are folders with one file
  of weights and optimiser state per rank plus ``meta.pt`` (the rest of Lightning's checkpoint).
  ``safe_load.load_checkpoint_file`` reads such a folder (resume check, ``evaluate``, ``sample``).
* CPU: PyTorch's FSDP runs on CPU with gloo when it is given ``device_id=torch.device("cpu")``; Lightning's
  FSDPStrategy passes the device index (None on a CPU) and refuses ``strategy="fsdp"`` with a CPU accelerator, so
  :class:`FSDPStrategyCPU` passes the device. tests/test_fsdp.py trains with it on two CPU processes.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

STRATEGY = "fsdp"


def is_sharded(strategy: Any) -> bool:
    """Whether ``strategy`` (a Trainer's) shards the weights: every rank then takes part in every forward pass."""
    return isinstance(strategy, FSDPStrategy)


def wrap_classes(backbone: nn.Module) -> set[type[nn.Module]]:
    """The module classes that get their own FSDP unit: the backbone's blocks (``backbone.blocks``, FIT's
    ``FITBlock``) and the backbone itself (what is outside the blocks). A backbone without ``blocks`` (the U-Net)
    is one unit."""
    return {type(backbone)} | {type(block) for block in getattr(backbone, "blocks", ())}


def mixed_precision(precision: str):
    """FSDP's MixedPrecision for Lightning's precision flag: bf16/fp16 compute for ``*-mixed``, gradients reduced
    in fp32, buffers and the batch never cast (Lightning's own default casts the buffers, the reduction and the
    batch to the compute type)."""
    from torch.distributed.fsdp import MixedPrecision

    compute = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return MixedPrecision(
        param_dtype=compute,
        reduce_dtype=torch.float32 if compute else None,
        buffer_dtype=None,
        # the batch stays as loaded (FSDP would cast the root's inputs, the clips among them, to bf16): the loss
        # target is fp32 and Lightning's autocast casts what the backbone computes
        cast_root_forward_inputs=False,
    )


class FSDPStrategyCPU(FSDPStrategy):
    """Lightning's FSDPStrategy that also runs on CPU processes (gloo): FSDP gets ``device_id=cpu``."""

    strategy_name = "fsdp_cpu"

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def fsdp_strategy(module: nn.Module, precision: str, accelerator: str = "auto") -> FSDPStrategy:
    """The strategy for ``trainer.strategy=fsdp``; ``module`` is the EDMVideoModule (its backbone decides the
    wrapping, its text tower is left out). On a CPU accelerator (or no GPU) the CPU-capable subclass."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return (FSDPStrategyCPU if cpu else FSDPStrategy)(
        auto_wrap_policy=ModuleWrapPolicy(wrap_classes(module.backbone)),
        mixed_precision=mixed_precision(precision),
        state_dict_type="sharded",
        ignored_modules=[module.text_encoder],
        # GPU: every rank starts from rank 0's weights; FSDP refuses this for CPU tensors, and the ranks build the
        # module from the same seed anyway
        sync_module_states=not cpu,
    )


def fsdp_root(module: Any) -> Any:
    """The FSDP root wrapping ``module`` while it trains under FSDP, else None."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not is_sharded(trainer.strategy):
        return None
    return trainer.strategy.model
