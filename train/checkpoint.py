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

Data order: megatron's sample order is a function of the number of samples asked for (train_iters x global
batch: it sets the epochs its shuffle spans and the blend index), the seeds, the sources with their weights,
the split, the sequence length and FIM. A checkpoint records these (`data_order`); a resume whose recipe
changes any of them would silently repeat some samples and skip others, so it stops with the differences
unless checkpoint.allow_data_order_change=true. The layout (TP/PP/CP/DP) is not part of it: the loaders
serve the same global batches at any DP size.

Tokenizer: a checkpoint records data.tokenizer's identity (name, vocab size, fingerprint; data.tokenizer
.tokenizer_identity), the ids its embedding rows were trained on. recorded_tokenizer() reads it back for the
HF export and evaluation, which would otherwise pair the weights with the Qwen2.5 tokenizer without a word.
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
from megatron.core.dist_checkpointing.validation import StrictHandling
from megatron.core.utils import unwrap_model
from torch.distributed.checkpoint.api import CheckpointException

from data.datasets import source_prefixes
from data.tokenizer import tokenizer_identity

LATEST = "latest"
# torch.distributed.checkpoint reports a corrupt shard file as CheckpointException, a BaseException.
_UNREADABLE = (Exception, CheckpointException)
# How megatron's distributed optimizer lays out its state (megatron-core 0.16.1 can no longer save the old
# "fully_sharded_model_space": ShardedTensor.flattened_range is refused). dp_reshardable: every rank writes
# its own shard, no communication, resumable at another DP size only. fully_reshardable: all-gathers each
# buffer over DP at save time, resumable at any TP/PP/CP/DP. Non-distributed optimizers reshard either way.
SHARDING_TYPES = {False: "dp_reshardable", True: "fully_reshardable"}
# Transformer Engine modules keep FP8 scaling state in `_extra_state` entries. Weights written by the local spec
# (the Hugging Face import, CPU runs) lack them for modules the local spec does not have, and megatron-core
# 0.16.1's TEDotProductAttention leaves its own out of its sharded state dict (extensions/transformer_engine.py),
# so even a TE checkpoint never holds it. Those entries keep their fresh values (FP8 scaling restarts); any
# other absent or unexpected tensor is an error.
EXTRA_STATE = "_extra_state"
# The RoPE base the weights were trained with, in each checkpoint's common state (recipes.validate.rope_base_in_use
# continues a checkpoint with it). Checkpoints written before it was recorded all trained at 1e6, the base every
# stage used then.
ROPE_BASE, UNRECORDED_ROPE_BASE = "rope_base", 1_000_000.0


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: names the path and what to do."""


class DataOrderChanged(CheckpointError):
    """The recipe would feed different samples than the checkpointed run; older checkpoints would too."""


def data_order(recipe) -> dict:
    """What fixes the sequence of training samples (see the module docstring); JSON-friendly. A directory or glob
    source adds the prefixes it matches ("shards"): a shard added or removed changes the blend."""
    data, train = recipe.data, recipe.train
    order = {
        "stage": recipe.stage.name,
        "train_samples (train_iters x global_batch_size)": train.train_iters * train.global_batch_size,
        "global_batch_size": train.global_batch_size,
        "seq_length": train.seq_length,
        "seed": data.seed if data.seed is not None else train.seed,
        "sources": [[s.name, s.prefix, s.weight, s.fim_rate] for s in data.sources],
        "split": data.split,
        "mode": data.mode,
        "fim": [data.fim_rate, data.fim_spm_rate],
    }
    if recipe.stage.name not in ("sft", "dpo"):  # their prefix is one JSONL file
        matched = {s.name: (s.prefix, source_prefixes(s)) for s in data.sources}
        shards = {name: prefixes for name, (prefix, prefixes) in matched.items() if prefixes != [prefix]}
        if shards:  # absent otherwise: checkpoints of plain prefixes keep their recorded order
            order["shards"] = shards
    return order


def check_data_order(directory: Path, saved: Optional[dict], recipe) -> None:
    """Refuse (or, when allowed, warn about) a resume whose recipe changes the data order."""
    if saved is None:
        warnings.warn(f"{directory} records no data order (an older checkpoint); cannot check that this "
                      "resume sees the same samples", stacklevel=2)
        return
    current = data_order(recipe)
    changes = [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in current.items() if saved.get(key) != value]
    if not changes:
        return
    summary = f"{directory} was trained on another data order:\n  " + "\n  ".join(changes)
    if recipe.checkpoint.allow_data_order_change:
        warnings.warn(summary + "\nresuming anyway (checkpoint.allow_data_order_change=true)", stacklevel=2)
        return
    raise DataOrderChanged(
        summary + "\nResuming would repeat some samples and skip others. Restore those values, or set "
        "checkpoint.allow_data_order_change=true to accept it, or start a new run dir from its weights only "
        f"(checkpoint.load={directory})."
    )


def recorded_tokenizer(checkpoint_dir) -> Optional[dict]:
    """{name, vocab_size, fingerprint} of the tokenizer a training checkpoint was trained with; None for a
    checkpoint that records none (a Hugging Face import, or one saved before tokenizers were recorded)."""
    return dist_checkpointing.load_common_state_dict(str(checkpoint_dir)).get("tokenizer")


@dataclass
class TrainingState:
    step: int = 0  # optimizer steps completed
    consumed_samples: int = 0


def _model_state_dict(model_chunks) -> dict:
    """Chunks in DDP (training) or bare (inference, conversion): the model's own sharded state either way."""
    modules = unwrap_model(list(model_chunks))
    if len(modules) == 1:
        return {"model": modules[0].sharded_state_dict()}
    return {f"model{i}": module.sharded_state_dict() for i, module in enumerate(modules)}


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


def _materialize_adam_state(optimizer) -> None:
    """torch Adam creates its state at the first step; megatron's distributed optimizer, without TE/apex
    FusedAdam, asserts a common "step" when asked for its state dict (distrib_optimizer.py:642), so a fresh
    optimizer cannot describe what to load. Zero tensors of the right shapes are overwritten in place by the load."""
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = chained.optimizer
        if not isinstance(inner, torch.optim.Adam):
            continue  # TE/apex FusedAdam keeps "step" in its param groups
        for group in inner.param_groups:
            for param in group["params"]:
                if not inner.state[param]:
                    inner.state[param] = {"step": torch.zeros((), dtype=torch.float32),
                                          "exp_avg": torch.zeros_like(param),
                                          "exp_avg_sq": torch.zeros_like(param)}


def _load_optimizer_state(optimizer, state: dict) -> None:
    """optimizer.load_state_dict, with torch Adam's per-parameter "step" kept out of megatron's way.

    Without TE/apex, megatron-core 0.16.1's distributed optimizer runs torch Adam, whose state holds a "step"
    tensor, but its loaders assume it does not: the dp_reshardable loader copies "step" from the load template
    into ONE step tensor shared by all parameters (distrib_optimizer.py:817 and :940; measured: step 0 instead
    of 3, loss 11.660 instead of 11.752 two steps after a resume), and the fully_reshardable loader raises
    KeyError('step') (:2100 skips it, :940 expects it). So each parameter's buffers are copied without "step",
    and every parameter then gets its own step from the param group, which megatron restores correctly.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(chained.optimizer, torch.optim.Adam) and hasattr(chained, "_set_main_param_and_optimizer_states"):
            chained._set_main_param_and_optimizer_states = _without_adam_step(chained)
    with torch.no_grad():  # fp32 + distributed optimizer: its main params are views of the model's leaves
        optimizer.load_state_dict(state)
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = chained.optimizer
        vars(chained).pop("_set_main_param_and_optimizer_states", None)
        for group in inner.param_groups:
            for param in group["params"]:
                if "step" in group and "step" in inner.state.get(param, {}):
                    inner.state[param]["step"] = torch.tensor(float(group["step"]), dtype=torch.float32)


def _without_adam_step(distributed_optimizer):
    copy_states = type(distributed_optimizer)._set_main_param_and_optimizer_states

    def copy_states_but_step(model_param, tensors):
        group_index, group_order = distributed_optimizer.model_param_group_index_map[model_param]
        main_param = distributed_optimizer.optimizer.param_groups[group_index]["params"][group_order]
        state = distributed_optimizer.optimizer.state[main_param]
        step = state.pop("step", None)
        try:
            copy_states(distributed_optimizer, model_param, {k: v for k, v in tensors.items() if k != "step"})
        finally:
            if step is not None:
                state["step"] = step

    return copy_states_but_step


def _sharded_state(trainer, is_loading: bool, metadata: dict) -> dict:
    state = _model_state_dict(trainer.model)
    state["optimizer"] = trainer.optimizer.sharded_state_dict(
        _model_state_dict(trainer.model), is_loading=is_loading, metadata=metadata
    )
    return state


def save_weights(model_chunks, directory: Path, rope_base: float) -> None:
    """Model weights only (what convert.py writes and `checkpoint.load` reads); any layout can load it."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save({**_model_state_dict(model_chunks), ROPE_BASE: rope_base}, str(directory))


def recorded_rope_base(directory: Path) -> Optional[float]:
    """The RoPE base a complete checkpoint directory records (UNRECORDED_ROPE_BASE for older ones); None when its
    common state cannot be read (resume then reports the checkpoint as unreadable)."""
    try:
        common = dist_checkpointing.load_common_state_dict(str(directory))
    except _UNREADABLE:
        return None
    return float(common.get(ROPE_BASE, UNRECORDED_ROPE_BASE)) if isinstance(common, dict) else None


def latest_checkpoint(checkpoints_dir: Path) -> Optional[Path]:
    """The checkpoint the `latest` pointer of a checkpoints/ directory names; None when it has none yet."""
    pointer = Path(checkpoints_dir) / LATEST
    return pointer.parent / pointer.read_text().strip() if pointer.is_file() else None


def resolve_checkpoint(path) -> Path:
    """The checkpoint directory `path` means: itself when it holds metadata.json (a checkpoints/step_* directory
    or a launch/convert.py import), else the newest complete checkpoint of a checkpoints/ directory or of a run
    directory, through `latest`. The error says what was looked for."""
    path = Path(path)
    if (path / "metadata.json").is_file():
        return path
    for where in (path, path / "checkpoints"):
        step = latest_checkpoint(where)
        if step is not None:
            if not (step / "metadata.json").is_file():
                raise CheckpointError(f"{where / LATEST} names {step}, which is not a complete checkpoint "
                                      "(no metadata.json); point at an existing checkpoints/step_* directory")
            return step
    looked_for = (f"{path / 'metadata.json'} (a checkpoints/step_* directory or a launch/convert.py import), "
                  f"{path / LATEST} (a checkpoints/ directory), {path / 'checkpoints' / LATEST} (a run directory)")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; a checkpoint is one of: {looked_for}")
    hint = ("; it holds a Hugging Face config.json: convert it with `launch/convert.py import` first"
            if (path / "config.json").is_file() else
            "; a run directory has none until its first save, and Hugging Face weights need "
            "`launch/convert.py import` first")
    raise CheckpointError(f"{path} is not a megatron distributed checkpoint: found none of {looked_for}{hint}")


def load_weights(model_chunks, directory: Path, rope_base_switch: bool = False) -> None:
    """Load model weights (no optimizer/step) into this layout from what resolve_checkpoint accepts.
    rope_base_switch: the stage sets its own RoPE base over the checkpoint's (stage.rope_base_switch)."""
    directory = resolve_checkpoint(directory)
    if not rope_base_switch:
        _check_rope_base(model_chunks, directory)
    loaded, _, absent = dist_checkpointing.load(_model_state_dict(model_chunks), str(directory),
                                                strict=StrictHandling.RETURN_UNEXPECTED)
    absent_weights = sorted(key for key in absent if not key.endswith(EXTRA_STATE))
    if absent_weights:
        raise CheckpointError(f"{directory} lacks model tensors this model needs: {', '.join(absent_weights[:6])}"
                              f"{' ...' if len(absent_weights) > 6 else ''}; it holds another model (shape, "
                              "tying or layers differ): pass the recipe it was written with")
    _apply_model_state(model_chunks, loaded)


def _check_rope_base(model_chunks, directory: Path) -> None:
    """Weights continue at the RoPE base they were trained with: a model built with another base (a recipe whose
    stage default differs, used without train.loop's resolution) is refused instead of silently rotating anew."""
    module = model_chunks[0]
    while not hasattr(module, "rotary_base") and hasattr(module, "module"):
        module = module.module  # DDP, then megatron's Float16Module
    recorded, built = recorded_rope_base(directory), getattr(module, "rotary_base", None)
    if recorded is not None and built is not None and float(built) != recorded:
        raise CheckpointError(f"{directory} was trained with RoPE base {recorded:g}, this model is built with "
                              f"{float(built):g}: build it with model.rope_base={recorded:g}")


def _apply_model_state(model_chunks, loaded: dict) -> None:
    """Copy loaded tensors into the chunks; only `_extra_state` entries may be absent (see EXTRA_STATE)."""
    keys = ["model"] if len(model_chunks) == 1 else [f"model{i}" for i in range(len(model_chunks))]
    for module, key in zip(unwrap_model(list(model_chunks)), keys):
        result = module.load_state_dict(loaded[key], strict=False)
        wrong = result.unexpected_keys + [k for k in result.missing_keys if not k.endswith(EXTRA_STATE)]
        if wrong:
            raise CheckpointError(f"model state does not match this model: {', '.join(wrong[:6])}"
                                  f"{' ...' if len(wrong) > 6 else ''}")


class CheckpointManager:
    """Save/resume for one run directory (see the module docstring for the on-disk protocol)."""

    def __init__(self, run_dir: Path, keep_last: int = 2, reshardable_optimizer: bool = False):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.metadata = {"distrib_optim_sharding_type": SHARDING_TYPES[reshardable_optimizer]}
        self.resumed_from: Optional[Path] = None
        self._tokenizer_identity: Optional[dict] = None
        if torch.distributed.get_rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale)  # an interrupted save: never published, never read
        torch.distributed.barrier()

    # ---- save -----------------------------------------------------------------------------------
    def save(self, trainer, state: TrainingState, recipe_dict: dict) -> Path:
        trainer.sync_params()  # overlap_param_gather: other shards' updated weights are not gathered yet
        name = f"step_{state.step:08d}"
        final, staging = self.root / name, self.root / f"{name}.tmp"
        if torch.distributed.get_rank() == 0:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        torch.distributed.barrier()
        sharded = _sharded_state(trainer, is_loading=False, metadata=self.metadata)
        sharded.update(
            layout=_layout_key(),
            rng_state=_rng_object(),
            scheduler=trainer.scheduler.state_dict(),
            training=dict(step=state.step, consumed_samples=state.consumed_samples),
            data_order=data_order(trainer.recipe),
            tokenizer=self._tokenizer(trainer.recipe.data.tokenizer),
            recipe=recipe_dict,
        )
        sharded[ROPE_BASE] = trainer.shape.rope_theta  # the base this run's weights train with
        dist_checkpointing.save(sharded, str(staging), content_metadata=self.metadata)
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

    def _tokenizer(self, spec: str) -> dict:
        if self._tokenizer_identity is None:  # a tokenizer directory takes ~1-3 s to load: once per run
            self._tokenizer_identity = tokenizer_identity(spec)
        return self._tokenizer_identity

    def _prune(self, keep: str) -> None:
        complete = sorted(p for p in self.root.glob("step_*") if not p.name.endswith(".tmp"))
        for old in complete[: max(len(complete) - self.keep_last, 0)]:
            if old.name != keep:
                shutil.rmtree(old)

    # ---- resume ---------------------------------------------------------------------------------
    def candidates(self) -> List[Path]:
        """Complete checkpoints, newest first, starting at the one `latest` names."""
        newest = latest_checkpoint(self.root)
        if newest is None:
            return []
        older = sorted((p for p in self.root.glob("step_*") if not p.name.endswith(".tmp") and p < newest),
                       reverse=True)
        return [newest, *older]

    def resume(self, trainer) -> Optional[TrainingState]:
        """Load the newest usable checkpoint into `trainer`; fall back to older ones with a warning."""
        failures = []
        for directory in self.candidates():
            try:
                state = self._load(trainer, directory)
                self.resumed_from = directory
                return state
            except DataOrderChanged:
                raise
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
        check_data_order(directory, common.get("data_order"), trainer.recipe)
        saved_layout = tuple(common["layout"])
        metadata = dist_checkpointing.load_content_metadata(str(directory))
        distributed = trainer.recipe.parallel.distributed_optimizer
        if distributed and metadata["distrib_optim_sharding_type"] == "dp_reshardable" \
                and saved_layout[:3] != _layout_key()[:3]:
            raise CheckpointError(
                f"{directory} holds distributed-optimizer state in the dp_reshardable format, written at "
                f"(tp, pp, cp)={saved_layout[:3]}; this run is at {_layout_key()[:3]}. Resume at the saved layout, "
                "or start from its weights only with checkpoint.load=" + str(directory) + " in a new run dir, or "
                "save with checkpoint.reshardable_optimizer=true when you plan to change the layout"
            )
        _materialize_adam_state(trainer.optimizer)
        sharded = _sharded_state(trainer, is_loading=True, metadata=metadata)
        if saved_layout == _layout_key():
            sharded["rng_state"] = _rng_object()
        else:
            warnings.warn(f"{directory} was written with layout (tp, pp, cp, dp)={saved_layout}; resuming at "
                          f"{_layout_key()}: weights and optimizer are resharded, RNG streams re-seeded",
                          stacklevel=2)
        loaded = dist_checkpointing.load(sharded, str(directory))
        _apply_model_state(trainer.model, loaded)
        _load_optimizer_state(trainer.optimizer, loaded["optimizer"])
        trainer.scheduler.load_state_dict(common["scheduler"])
        if "rng_state" in sharded:
            _restore_rng(loaded["rng_state"])
        training = common["training"]
        return TrainingState(step=int(training["step"]), consumed_samples=int(training["consumed_samples"]))
