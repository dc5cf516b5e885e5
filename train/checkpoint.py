"""Checkpoints that survive kill -9: megatron dist_checkpointing (torch_dist), published atomically.

Layout of RUN_DIR/checkpoints/:
    step_00000100/      a complete megatron distributed checkpoint (every rank writes its shards)
    step_00000100.tmp/  being written; never read; removed on the next save or start
    latest              text file naming the newest complete checkpoint ("step_00000100")

A save writes into `<name>.tmp/`, all ranks barrier, rank 0 renames the directory (atomic on POSIX) and then
replaces `latest` through a temp file + os.replace (atomic). A kill at any instant leaves either the old or the
new `latest`, each naming a complete directory. Resharding: model tensors and the optimizer state are saved as
megatron ShardedTensors in model space ("fully_sharded_model_space" for the distributed optimizer), so a
checkpoint written at TP2 loads at TP1 or PP2. RNG states are per rank and restored only when the layout is
unchanged (dropout is 0 in Qwen2, so they only matter for bit-exact resume).
"""
from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException

LATEST = "latest"
# torch.distributed.checkpoint reports a corrupt shard file as CheckpointException, a BaseException.
_UNREADABLE = (Exception, CheckpointException)
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_sharded_model_space"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: names the path and what to do."""


@dataclass
class TrainingState:
    step: int = 0  # optimizer steps completed
    consumed_samples: int = 0


def _model_state_dict(model_chunks) -> dict:
    if len(model_chunks) == 1:
        return {"model": model_chunks[0].module.sharded_state_dict()}
    return {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _layout_key() -> tuple:
    return (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_context_parallel_world_size(),
        parallel_state.get_data_parallel_world_size(),
    )


def _rng_object() -> ShardedObject:
    """This rank's RNG streams, stored once per rank under the layout they belong to."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    state = {
        "layout": _layout_key(),
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(trainer, is_loading: bool) -> dict:
    state = _model_state_dict(trainer.model)
    state["optimizer"] = trainer.optimizer.sharded_state_dict(
        _model_state_dict(trainer.model), is_loading=is_loading, metadata=_OPTIMIZER_METADATA
    )
    return state


def save_weights(model_chunks, directory: Path) -> None:
    """Model weights only (what convert.py writes and `checkpoint.load` reads); any layout can load it."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(_model_state_dict(model_chunks), str(directory))


def load_weights(model_chunks, directory: Path) -> None:
    """Load model weights (no optimizer/step) from a full or weights-only checkpoint into this layout."""
    directory = Path(directory)
    if not (directory / "metadata.json").exists():
        raise CheckpointError(f"{directory} is not a megatron distributed checkpoint (no metadata.json); "
                              "convert Hugging Face weights with launch/convert.py first")
    loaded = dist_checkpointing.load(_model_state_dict(model_chunks), str(directory))
    _apply_model_state(model_chunks, loaded)


def _apply_model_state(model_chunks, loaded: dict) -> None:
    keys = ["model"] if len(model_chunks) == 1 else [f"model{i}" for i in range(len(model_chunks))]
    for chunk, key in zip(model_chunks, keys):
        chunk.module.load_state_dict(loaded[key], strict=True)


class CheckpointManager:
    """Save/resume for one run directory (see the module docstring for the on-disk protocol)."""

    def __init__(self, run_dir: Path, keep_last: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        if torch.distributed.get_rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale)  # an interrupted save: never published, never read
        torch.distributed.barrier()

    # ---- save -----------------------------------------------------------------------------------
    def save(self, trainer, state: TrainingState, recipe_dict: dict) -> Path:
        name = f"step_{state.step:08d}"
        final, staging = self.root / name, self.root / f"{name}.tmp"
        if torch.distributed.get_rank() == 0:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        torch.distributed.barrier()
        sharded = _sharded_state(trainer, is_loading=False)
        sharded.update(
            layout=_layout_key(),
            rng_state=_rng_object(),
            scheduler=trainer.scheduler.state_dict(),
            training=dict(step=state.step, consumed_samples=state.consumed_samples),
            recipe=recipe_dict,
        )
        dist_checkpointing.save(sharded, str(staging), content_metadata=_OPTIMIZER_METADATA)
        torch.distributed.barrier()
        if torch.distributed.get_rank() == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            pointer = self.root / f"{LATEST}.tmp"
            pointer.write_text(name + "\n")
            os.replace(pointer, self.root / LATEST)
            self._prune(keep=name)
        torch.distributed.barrier()
        return final

    def _prune(self, keep: str) -> None:
        complete = sorted(p for p in self.root.glob("step_*") if not p.name.endswith(".tmp"))
        for old in complete[: max(len(complete) - self.keep_last, 0)]:
            if old.name != keep:
                shutil.rmtree(old)

    # ---- resume ---------------------------------------------------------------------------------
    def candidates(self) -> List[Path]:
        """Complete checkpoints, newest first, starting at the one `latest` names."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return []
        newest = self.root / pointer.read_text().strip()
        older = sorted((p for p in self.root.glob("step_*") if not p.name.endswith(".tmp") and p < newest),
                       reverse=True)
        return [newest, *older]

    def resume(self, trainer) -> Optional[TrainingState]:
        """Load the newest usable checkpoint into `trainer`; fall back to older ones with a warning."""
        failures = []
        for directory in self.candidates():
            try:
                return self._load(trainer, directory)
            except _UNREADABLE as error:  # each failure is warned about now and listed if none loads
                failures.append(f"{directory}: {type(error).__name__}: {error}")
                warnings.warn(f"checkpoint {directory} is unreadable ({type(error).__name__}: {error}); "
                              "trying the previous complete checkpoint", stacklevel=2)
        if failures:
            raise CheckpointError(
                "no checkpoint in " + str(self.root) + " could be loaded:\n  " + "\n  ".join(failures)
                + "\nMove the broken directories away to start fresh, or fix the file named above."
            )
        return None

    def _load(self, trainer, directory: Path) -> TrainingState:
        if not (directory / "metadata.json").exists():
            raise CheckpointError(f"{directory / 'metadata.json'} is missing (incomplete checkpoint)")
        common = dist_checkpointing.load_common_state_dict(str(directory))
        saved_layout = tuple(common["layout"])
        sharded = _sharded_state(trainer, is_loading=True)
        if saved_layout == _layout_key():
            sharded["rng_state"] = _rng_object()
        else:
            warnings.warn(f"{directory} was written with layout (tp, pp, cp, dp)={saved_layout}; resuming at "
                          f"{_layout_key()}: weights and optimizer are resharded, RNG streams re-seeded",
                          stacklevel=2)
        loaded = dist_checkpointing.load(sharded, str(directory))
        _apply_model_state(trainer.model, loaded)
        trainer.optimizer.load_state_dict(loaded["optimizer"])
        trainer.scheduler.load_state_dict(common["scheduler"])
        if "rng_state" in sharded:
            _restore_rng(loaded["rng_state"])
        training = common["training"]
        return TrainingState(step=int(training["step"]), consumed_samples=int(training["consumed_samples"]))
