"""Evaluation summaries into the run they came from: metrics.jsonl and its W&B run (train.metrics.MetricsLogger,
resumed under the run's stable id), at the step of the evaluated checkpoint.

Keys (`run_values`, the one naming for launch/evaluate.py and evaluation during training): "eval/TASK/METRIC" for
every metric of the task's summary, the numbers the printed table shows (evaluation.report), per-language ones
included: hm_fim's "exact_match/python" is logged as "eval/hm_fim/exact_match/python"."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from evaluation.tasks import get


def run_values(summaries: List[dict]) -> Dict[str, float]:
    """{"eval/TASK/METRIC": value} for each summary's metrics (Task.metrics, in the table's order)."""
    return {f"eval/{s['task']}/{metric}": s[metric] for s in summaries for metric in get(s["task"]).metrics
            if metric in s}


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
    logger.log_validation(int(common["training"]["step"]), run_values(summaries))
    logger.close()
