"""What an objective is to the trainer: a sample, its datasets, the forward step and loss, a pass before step 1.

train.trainer runs megatron's schedules with the objective's forward step and reduces what its loss function
reports; train.data_feed builds the objective's datasets; train.loop runs its `prepare` between building the
datasets and the first read. The facts tools need without torch (rows per sample, metric names, rules) are the
stage's StageSpec (recipes.stages), which `spec` holds.

Loss contract (megatron's): the loss function of a micro-batch returns (loss sum, count, reports). The count is
what the loss is a mean over (tokens, pairs): megatron sums gradients over micro-batches and data x context
ranks and divides by the global count. Reports are sums the trainer adds over the same ranks:
LOSS_REPORT [loss sum, count] (every objective: the logged loss), METRICS_REPORT [one sum per spec.metrics
name] (logged as sum / count) and SOURCE_REPORT [sources, 2] (loss sum and tokens per blended data source).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from recipes.schema import Recipe
from recipes.stages import StageSpec

LOSS_REPORT = "lm loss"
METRICS_REPORT = "metrics"
SOURCE_REPORT = "source loss"


class Objective:
    """One stage's training objective (module docstring); subclasses fill in the data and the step."""

    def __init__(self, recipe: Recipe, spec: StageSpec):
        self.recipe, self.spec = recipe, spec

    def check_sources(self) -> None:
        """Raise DataValidationError for a missing or unreadable source, in well under a second: train.loop
        runs it before the model build, which takes minutes at 32B."""
        raise NotImplementedError

    def build_datasets(self, **sizes):
        """(train_ds, valid_ds or None) for data.loader; `sizes`: seq_length, train_samples, valid_samples, seed,
        tokenizer."""
        raise NotImplementedError

    def schedule_shape(self) -> tuple[int, int]:
        """(sequence length, sequences per micro-batch) of the tensors that flow between pipeline stages."""
        train = self.recipe.train
        return train.seq_length, train.micro_batch_size * self.spec.rows_per_sample

    def forward_step(self, data_iterator: Iterator[dict], model):
        """megatron's forward_step_func: (model output, loss function of it) for the next micro-batch."""
        raise NotImplementedError

    def prepare(self, trainer, run_dir: Path, trained: bool, train_ds) -> None:
        """Runs once the datasets exist, before any loader reads (loader workers copy the dataset then);
        `trained`: the run resumed from a checkpoint. Nothing by default."""
