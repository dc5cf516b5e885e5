"""The training run: validate the recipe, build the trainer, resume, iterate, evaluate, save, log.

Order on start: layout validation against torchrun's world size, the `checkpoint.load` path and the data
sources (each fails in seconds, on every rank alike, before the process group and long before a 30-minute model
build) -> process group -> Trainer (model, optimizer, schedule) -> resume from RUN_DIR/checkpoints, else
initial weights from `checkpoint.load`, else fresh init -> data positioned at the consumed-sample count.
A step that yields a NaN/Inf loss or gradient norm stops the run before the update is applied; the last
complete checkpoint stays the resume point (no save happens on that path).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, Sequence

import torch
from recipes.schema import Recipe
from recipes.validate import describe_rope, rope_base_in_use, validate
from train.checkpoint import (CheckpointManager, TrainingState, latest_checkpoint, load_weights, recorded_rope_base,
                              resolve_checkpoint)
from train.data_feed import DataFeed, check_sources
from train.distributed import init_process_group
from train.metrics import MetricsLogger
from train.run_lock import acquire_on_rank0
from train.trainer import Trainer

log = logging.getLogger("train")
StepEvaluation = Callable[[Trainer, int], Dict[str, float]]  # (trainer, step) -> values to log ({}: none)


def _setup_logging(run_dir: Path) -> None:
    """One log file per rank under RUN_DIR/logs; rank 0 also logs to the console."""
    rank = torch.distributed.get_rank()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(run_dir / "logs" / f"rank{rank}.log")]
    if rank == 0:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(message)s", handlers=handlers,
                        force=True)
    logging.getLogger("megatron").setLevel(logging.WARNING)  # dataset index chatter: megatron logs at INFO


def run(recipe: Recipe, recipe_dict: dict, step_evaluations: Sequence[StepEvaluation] = ()) -> list[dict]:
    """Train `recipe` to train.train_iters; returns the training records logged at each log interval.

    step_evaluations: called after each step's validation as `(trainer, step)`; what they return is logged at
    that step (launch/pretrain.py passes evaluation.during_training's, so train/ never imports evaluation/)."""
    # What a user can get wrong fails in seconds, on every rank alike, before the process group exists (so
    # no rank is left waiting in it) and long before a model build that takes minutes at 32B.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's (1 when run as a plain process)
    validate(recipe, world_size)
    run_dir = Path(recipe.run.dir)
    initial_weights = None
    if recipe.checkpoint.load and latest_checkpoint(run_dir / "checkpoints") is None:  # no resume: load
        initial_weights = resolve_checkpoint(recipe.checkpoint.load)
    continued = latest_checkpoint(run_dir / "checkpoints") or initial_weights  # the weights the run goes on from
    recorded = recorded_rope_base(continued) if continued else None
    rope_base = rope_base_in_use(recipe, recorded, str(continued))  # what the model is built with
    positions = describe_rope(recipe, recorded)
    recipe.model.rope_base = rope_base
    check_sources(recipe)
    init_process_group()
    if torch.distributed.get_world_size() != world_size:
        raise RuntimeError(f"the process group has {torch.distributed.get_world_size()} ranks but WORLD_SIZE said "
                           f"{world_size}; launch with torchrun --nproc_per_node/--nnodes")
    acquire_on_rank0(run_dir)  # one run per directory (train.run_lock); held until this process exits
    run_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir)
    log.info("%s", positions)

    trainer = Trainer(recipe)
    checkpoints = CheckpointManager(run_dir, keep_last=recipe.checkpoint.keep_last,
                                    reshardable_optimizer=recipe.checkpoint.reshardable_optimizer)
    state = checkpoints.resume(trainer)
    if state is not None:
        log.info("resumed from %s at step %d", checkpoints.resumed_from, state.step)
    else:
        state = TrainingState()
        if initial_weights is not None:
            load_weights(trainer.model, initial_weights, recipe.stage.rope_base_switch)
            trainer.optimizer.reload_model_params()
            log.info("initial weights from %s", initial_weights)

    trained = state.step > 0
    feed = DataFeed(recipe, num_chunks=len(trainer.model), consumed_samples=state.consumed_samples,
                    prepare=lambda train_ds: trainer.objective.prepare(trainer, run_dir, trained, train_ds))
    metrics = MetricsLogger(recipe, trainer.shape, run_dir, world_size, recipe_dict)
    metrics.start_progress(state.step, recipe.train.train_iters)
    records = []
    try:
        records = _train(recipe, trainer, feed, state, checkpoints, metrics, recipe_dict, step_evaluations)
    finally:
        metrics.close()
    if torch.distributed.get_rank() == 0 and recipe.logging.plots:
        from train.plots import render_plots

        render_plots(run_dir)
    return records


def _train(recipe, trainer, feed, state, checkpoints, metrics, recipe_dict, step_evaluations) -> list[dict]:
    train_cfg = recipe.train
    tokens_per_batch = train_cfg.global_batch_size * train_cfg.seq_length
    rows = trainer.objective.spec.rows_per_sample  # sequences per sample (DPO: a pair)
    tokens_per_batch *= rows
    records, window = [], dict(loss=0.0, seconds=0.0, steps=0, metrics={})
    while state.step < train_cfg.train_iters:
        started = time.perf_counter()
        result = trainer.train_step(state.step + 1, feed.train_iterators())  # 1-based, as logged
        state.step += 1
        state.consumed_samples += train_cfg.global_batch_size
        window["loss"] += result.loss
        window["seconds"] += time.perf_counter() - started
        window["steps"] += 1
        for name, value in result.metrics.items():
            window["metrics"][name] = window["metrics"].get(name, 0.0) + value
        metrics.advance()
        if state.step % train_cfg.log_interval == 0 or state.step == train_cfg.train_iters:
            steps = window["steps"]
            records.append(metrics.log_train(
                step=state.step, loss=window["loss"] / steps, lr=result.lr, grad_norm=result.grad_norm,
                step_seconds=window["seconds"] / steps, tokens_in_batch=tokens_per_batch,
                consumed_tokens=state.consumed_samples * train_cfg.seq_length * rows,
                extra={name: total / steps for name, total in window["metrics"].items()}))
            window = dict(loss=0.0, seconds=0.0, steps=0, metrics={})
        if feed.has_validation and train_cfg.eval_interval and state.step % train_cfg.eval_interval == 0:
            metrics.log_validation(state.step, trainer.evaluate(feed.valid_iterators(), train_cfg.eval_iters))
        for evaluation in step_evaluations:
            values = evaluation(trainer, state.step)
            if values:
                metrics.log_validation(state.step, values)
        save_every = recipe.checkpoint.save_interval
        if (save_every and state.step % save_every == 0) or state.step == train_cfg.train_iters:
            path = checkpoints.save(trainer, state, recipe_dict)
            log.info("saved %s", path)
    return records
