"""The DPO reference: the starting policy's log-probabilities of every pair, computed once, kept with the run.

Why precomputed rather than a second, frozen model: the reference never changes, so one forward pass over the
pairs before training gives every number it would ever produce. A frozen copy would hold the weights twice
(bf16: 2 bytes per parameter and rank, 15 GiB for 7B at TP1, pushing 7B DPO from TP2 to TP4) and run a second
forward on every step. Costs of the pass instead: time, one forward over each pair once (the train and
validation pairs of the file), i.e. ~1/3 of one training epoch's compute (forward = 1/3 of forward+backward),
+33 % for DPO's usual single epoch and nothing on GPU memory beyond a training step's; storage, 16 bytes per
pair (float64 chosen and rejected sums) in RUN_DIR/reference_logps.pt and in each rank's host memory.

The pass runs the training model itself (train.objectives.dpo.forward_step with reference_pass=True, megatron's
forward-only schedule, every layout), so at step 1 policy and reference agree to the last bit on the same
hardware and the first loss is ln 2. It reads the pairs in file order, each DP rank its share, and every
REFERENCE_SAVE_EVERY global batches rank 0 saves the values so far (write to a temporary file, then rename):
a killed pass resumes after the last save. The file records what it was computed from and is refused
(ReferenceMismatch, naming what differs) when the run's pairs or numerics are not those:
- data: sha256 of the rendered rows (data.preference.PairStore.digest: file, tokenizer, system prompt,
  seq_length and truncation all change it); checked on every start;
- numerics: every recipe value that changes the log-probs of the same weights (`logp_fields`: the shape with its
  overrides and RoPE base, YaRN, the layer spec in use, dtype and FP8 settings); checked on every start, since
  the policy trained after step 1 runs with them too;
- weights: the checkpoint that checkpoint.load resolved to (a run dir means its newest step) and a digest of its
  files (relative path, size, sha256 of the first and last MiB of each file, all of a file under 2 MiB), or for a
  fresh init the seed and layout (GPU init draws per model-parallel rank). Checked only while the run starts
  from those weights, i.e. before it has trained: once it has a checkpoint of its own, the starting checkpoint's
  directory may gain newer steps or be pruned without concern, because the reference no longer reads it.
A run that already trained (a checkpoint in the run dir) but has no complete reference is refused: the
starting policy is gone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from megatron.core import parallel_state

from data.loader import build_loader
from data.preference import EveryPair, PairStore
from recipes.schema import Recipe
from train.checkpoint import resolve_checkpoint
from train.distributed import rank_device

log = logging.getLogger("train")
FILE_NAME = "reference_logps.pt"
REFERENCE_SAVE_EVERY = 50  # global batches between saves of a pass in progress
MIB = 1 << 20


class ReferenceMismatch(RuntimeError):
    """The run dir's reference log-probs belong to other pairs or other starting weights."""


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= 2 * MIB:
            digest.update(handle.read())
        else:
            digest.update(handle.read(MIB))
            handle.seek(size - MIB)
            digest.update(handle.read(MIB))
    return digest.hexdigest()


def logp_fields(recipe: Recipe, transformer_impl: str) -> dict:
    """Recipe values that change the log-probs a given set of weights produces, as strings (module docstring)."""
    precision = {f"precision.{k}": v for k, v in dataclasses.asdict(recipe.precision).items()
                 if k != "grad_reduce_in_fp32"}  # gradients only
    return {k: str(v) for k, v in {
        "model shape": recipe.model_shape(),  # shrink overrides and the RoPE base in use
        "model.yarn_factor": recipe.model.yarn_factor,
        "model.yarn_original_max_position_embeddings": recipe.model.yarn_original_max_position_embeddings,
        "model.transformer_impl": transformer_impl, **precision}.items()}


def weights_fingerprint(recipe: Recipe) -> dict:
    """The starting weights: {"checkpoint": what checkpoint.load resolves to now, "digest": of its files}."""
    if not recipe.checkpoint.load:
        p = recipe.parallel
        return {"checkpoint": "fresh init", "digest": f"seed {recipe.train.seed} tp {p.tp} pp {p.pp} vpp {p.vpp}"}
    root = resolve_checkpoint(recipe.checkpoint.load)  # a run dir means its newest checkpoint, as train.loop loads
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)} {path.stat().st_size} {_file_digest(path)}\n".encode())
    return {"checkpoint": str(root.resolve()), "digest": digest.hexdigest()}


def _save(path: Path, fingerprint: dict, values: torch.Tensor, done: torch.Tensor) -> None:
    partial = path.with_suffix(".tmp")
    torch.save({"fingerprint": fingerprint, "logps": values, "done": done}, partial)
    os.replace(partial, path)


def _weights(recorded: dict) -> dict:
    """The recorded starting weights; files written before the path was recorded hold a bare digest."""
    weights = recorded["weights"]
    return weights if isinstance(weights, dict) else {"checkpoint": "weights of unrecorded path", "digest": weights}


def _check(path: Path, saved: dict, fingerprint: dict, pairs: int) -> None:
    """Refuse a saved reference whose pairs, numerics or (when given) starting weights are not this run's."""
    recorded = saved["fingerprint"]
    fix = (f"use a new run.dir, or delete {path.name} to recompute it (only before training started: a "
           "checkpointed run no longer has its starting weights)")
    if recorded["data"] != fingerprint["data"] or len(saved["done"]) != pairs:
        raise ReferenceMismatch(f"{path} holds reference log-probs of other data than this run's "
                                f"({len(saved['done'])} pairs saved, {pairs} now): {fix}")
    changed = [f"{k}: {v} -> {fingerprint['logps'].get(k)}" for k, v in recorded.get("logps", {}).items()
               if fingerprint["logps"].get(k) != v]
    if changed:
        raise ReferenceMismatch(f"{path} was computed with other settings that change the log-probs:\n  "
                                + "\n  ".join(changed) + f"\nRestore them (this run started with them), or {fix}")
    if "weights" in fingerprint and recorded["weights"] != fingerprint["weights"]:
        then, now = _weights(recorded), fingerprint["weights"]
        what = (f"checkpoint.load now resolves to {now['checkpoint']}" if then["checkpoint"] != now["checkpoint"]
                else f"the files of {now['checkpoint']} changed")
        raise ReferenceMismatch(
            f"{path} holds the reference log-probs of other weights: it was computed from {then['checkpoint']}, "
            f"and {what}. This run has not trained yet and would start from those: set "
            f"checkpoint.load={then['checkpoint']} if it still exists, or {fix}")


def attach_reference(trainer, recipe: Recipe, run_dir: Path, trained: bool, dataset) -> None:
    """Load or compute the reference log-probs of every pair of the dataset's PairStore; attach them to it."""
    store: PairStore = dataset.store
    path = run_dir / FILE_NAME
    fingerprint = {"data": store.digest(), "logps": logp_fields(recipe, trainer.transformer_impl)}
    if not trained:  # the run starts from checkpoint.load: it must be what the reference was computed from
        fingerprint["weights"] = weights_fingerprint(recipe)
    saved = torch.load(path, weights_only=True) if path.is_file() else None
    if saved is not None:
        _check(path, saved, fingerprint, len(store))
    if saved is not None and bool(saved["done"].all()):
        store.reference = saved["logps"].numpy()
        log.info("DPO reference log-probs of %d pairs from %s (computed from %s)", len(store), path,
                 _weights(saved["fingerprint"])["checkpoint"])
        return
    if trained:
        raise ReferenceMismatch(f"this run has trained (a checkpoint exists in {run_dir}) but {path} is missing or "
                                "incomplete, and the starting policy it needs is gone; start a new run.dir")
    values, done = (saved["logps"], saved["done"]) if saved is not None else (
        torch.zeros(len(store), 2, dtype=torch.float64), torch.zeros(len(store), dtype=torch.bool))
    _compute(trainer, recipe, store, path, fingerprint, values, done)
    store.reference = values.numpy()


def _compute(trainer, recipe: Recipe, store: PairStore, path: Path, fingerprint: dict, values, done) -> None:
    train = recipe.train
    batch = train.global_batch_size
    total = -(-len(store) // batch) * batch
    start = int(torch.nonzero(~done)[0]) // batch * batch
    log.info("DPO reference: forward pass over %d pairs from pair %d (%d global batches)", len(store), start,
             (total - start) // batch)
    loader = dataclasses.replace(recipe.data, loader="torch")
    samples = EveryPair(store, total, train.seq_length)
    iterators = [iter(build_loader(samples, train.micro_batch_size, batch, parallel_state.get_data_parallel_rank(),
                                   parallel_state.get_data_parallel_world_size(), start, loader))
                 for _ in trainer.model]
    sums = torch.zeros(len(store), 3, dtype=torch.float64)  # logp_c, logp_r, reports
    for number in range(1, (total - start) // batch + 1):
        for report in trainer.forward_only(iterators, trainer.objective.reference_step):
            rows = report["reference"].detach().to("cpu", torch.float64)
            index = rows[:, 0].long()
            sums.index_add_(0, index, torch.cat([rows[:, 1:], torch.ones(len(rows), 1, dtype=torch.float64)], 1))
        if number % REFERENCE_SAVE_EVERY == 0 or start + number * batch >= total:
            reduced = sums.to(rank_device())
            torch.distributed.all_reduce(reduced)  # every reporting rank (TP/CP peers, DP shares) adds its rows
            sums = reduced.cpu()
            seen = sums[:, 2] > 0
            values[seen] = sums[seen, :2] / sums[seen, 2:]
            done |= seen
            sums.zero_()
            if torch.distributed.get_rank() == 0:
                _save(path, fingerprint, values, done)
            log.info("DPO reference: %d of %d pairs", int(done.sum()), len(store))
    if not bool(done.all()):
        raise RuntimeError(f"DPO reference pass left {int((~done).sum())} pairs without a value")

