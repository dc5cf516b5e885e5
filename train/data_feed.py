"""Micro-batches for the trainer: this data-parallel rank's share of each global batch, resumable.

Every rank of a data-parallel replica (its TP, PP and CP peers) reads the same micro-batches; context
parallelism slices them later (train.objectives.lm.forward_step). With virtual pipeline stages each model chunk
gets its own iterator over the same sequence, because megatron's interleaved schedule pulls per chunk.
Samples are addressed by index: global batch b holds samples [b*G, (b+1)*G), so resuming at a consumed-sample
count continues with exactly the samples an uninterrupted run would have seen, for any DP size.
The stage's objective (train.objectives) builds the datasets: blended .bin/.idx sources (data.datasets), ChatML
conversations (data.sft) or preference pairs (data.preference); the loaders are shared.
Validation: every evaluation reads the same first `eval_iters` global batches of the validation split, so
validation losses compare across steps and are the same batches before and after a resume.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional

from megatron.core import parallel_state

from data.loader import build_loader
from data.tokenizer import load_tokenizer
from recipes.schema import Recipe
from train.objectives import objective_for


def check_sources(recipe: Recipe) -> None:
    """Raise DataValidationError for a missing or unreadable source, in well under a second (Objective.
    check_sources): train.loop runs it before the model build, which takes minutes at 32B. The dataset builders
    check the rest (empty splits, bad lines) when they run."""
    objective_for(recipe).check_sources()


class DataFeed:
    def __init__(self, recipe: Recipe, num_chunks: int, consumed_samples: int,
                 prepare: Optional[Callable] = None):
        """prepare(train_ds): runs after the datasets are built, before any loader reads (train.loop passes the
        objective's prepare: DPO's reference pass attaches its log-probs to the pairs before loader workers copy
        the dataset)."""
        train = recipe.train
        self.num_chunks = num_chunks
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        train_ds, valid_ds = objective_for(recipe).build_datasets(
            seq_length=train.seq_length,
            train_samples=train.train_iters * train.global_batch_size,
            valid_samples=train.eval_iters * train.global_batch_size if train.eval_interval else 0,
            seed=train.seed,
            tokenizer=load_tokenizer(recipe.data.tokenizer),
        )
        if prepare is not None:
            prepare(train_ds)
        self.has_validation = valid_ds is not None and train.eval_iters > 0
        self._recipe, self._valid_ds = recipe, valid_ds
        self._train = [self._loader(recipe, train_ds, consumed_samples) for _ in range(num_chunks)]

    def _loader(self, recipe: Recipe, dataset, consumed_samples: int) -> Iterator[dict]:
        return iter(build_loader(
            dataset,
            micro_batch_size=recipe.train.micro_batch_size,
            global_batch_size=recipe.train.global_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            consumed_samples=consumed_samples,
            config=recipe.data,
        ))

    def train_iterators(self) -> List[Iterator[dict]]:
        return self._train

    def valid_iterators(self) -> List[Iterator[dict]]:
        """Fresh iterators from the start of the validation split (the same batches at every evaluation)."""
        return [self._loader(self._recipe, self._valid_ds, 0) for _ in range(self.num_chunks)]
