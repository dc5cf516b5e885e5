"""Evaluation summaries into the run they came from: metrics.jsonl and its W&B run (train.metrics.MetricsLogger,
resumed under the run's stable id), at the step of the evaluated checkpoint, keys "eval/TASK/METRIC"."""
from __future__ import annotations

from pathlib import Path
from typing import List

RUN_METRICS = ("pass@1", "exact_match")


def run_dir_of(checkpoint: Path):
    """The run directory a checkpoint argument belongs to (RUN, RUN/checkpoints or RUN/checkpoints/step_N)."""
    checkpoint = Path(checkpoint).resolve()
    for candidate in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (candidate / "checkpoints").is_dir() and (candidate / "metrics.jsonl").is_file():
            return candidate
    return None


def log_summaries(checkpoint: Path, summaries: List[dict]) -> None:
    from megatron.core import dist_checkpointing
    from omegaconf import OmegaConf

    from recipes.schema import Recipe
    from train.checkpoint import resolve_checkpoint
    from train.metrics import MetricsLogger

    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        return
    common = dist_checkpointing.load_common_state_dict(str(resolve_checkpoint(checkpoint)))
    stored = common["recipe"]
    recipe = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Recipe), stored))
    logger = MetricsLogger(recipe, recipe.model_shape(), run_dir, 1, stored)
    values = {f"eval/{s['task']}/{metric}": s[metric] for s in summaries for metric in RUN_METRICS if metric in s}
    logger.log_validation(int(common["training"]["step"]), values)
    logger.close()
