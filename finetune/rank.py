"""Inside each rank of a multi-process run: reductions, agreeing when to stop, saving sharded weights.

Where a process group exists, every function here is a collective: every rank must call it at the same
point. In a single process each one returns its input (or False: nothing sharded to save). The parent
that starts the ranks is finetune.launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune import atomic

# Stop reasons from least to most severe: ranks that disagree take the most severe one.
_REASONS = [None, "time_budget", "interrupted", "diverged"]


def reduce_max(values: list[float]) -> list[float]:
    """Element-wise maximum over all ranks (the values unchanged in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    import torch
    from accelerate import PartialState

    # NCCL reduces only GPU tensors, gloo only CPU ones: use the device this rank trains on.
    device = PartialState().device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def agree_on_stop(reason: str | None) -> str | None:
    """Every rank must stop at the same step, or collective ops deadlock: take the most severe reason."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reason
    return _REASONS[int(reduce_max([_REASONS.index(reason)])[0])]


def peak_over_ranks(record: dict[str, Any], telemetry: Any) -> None:
    """Replace this rank's peak memory in a metrics record by the largest rank's (all ranks must call it)."""
    keys = [key for key in ("peak_memory_mb", "peak_reserved_mb") if record.get(key) is not None]
    if not keys:
        return
    for key, value in zip(keys, reduce_max([float(record[key]) for key in keys]), strict=True):
        record[key] = round(value, 1)
    telemetry.ledger.peak_memory_mb = max(telemetry.ledger.peak_memory_mb, record["peak_memory_mb"])


def save_sharded_adapter(trainer: Any, adapter_dir: Path) -> bool:
    """Under FSDP or DeepSpeed, gather and save the adapter (every rank must call); False otherwise.

    The weights are sharded over the ranks there, so the main process alone cannot write them: the
    trainer's save_model gathers them (FSDP: as a full state dict on rank 0) and saves the adapter and
    tokenizer from the main process, which then publishes the folder atomically.
    """
    if not (getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)):
        return False
    import shutil

    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp-ranks")  # one name that every rank agrees on
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; one-process adapters have none
        atomic.publish_dir(tmp, adapter_dir)
    return True
