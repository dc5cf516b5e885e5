"""Micro-batches for the trainer: this data-parallel rank's share of each global batch, resumable.

Every rank of a data-parallel replica (its TP, PP and CP peers) reads the same micro-batches; context
parallelism slices them later (train.trainer.forward_step). With virtual pipeline stages each model chunk gets
its own iterator over the same sequence, because megatron's interleaved schedule pulls per chunk.
Samples are addressed by index: global batch b holds samples [b*G, (b+1)*G), so resuming at a consumed-sample
count continues with exactly the samples an uninterrupted run would have seen, for any DP size.
The stage picks the datasets: file/repo blend the prepared .bin/.idx sources (data.datasets), sft reads ChatML
conversations from one JSONL file (data.sft); both yield the same sample fields, so the loaders are shared.
"""
from __future__ import annotations

from typing import Iterator, List

from megatron.core import parallel_state

from data.datasets import build_pretrain_datasets
from data.loader import build_loader
from data.sft import build_sft_datasets
from data.tokenizer import load_tokenizer
from recipes.schema import Recipe

DATASET_BUILDERS = {"file": build_pretrain_datasets, "repo": build_pretrain_datasets, "sft": build_sft_datasets}


class DataFeed:
    def __init__(self, recipe: Recipe, num_chunks: int, consumed_samples: int):
        train = recipe.train
        self.num_chunks = num_chunks
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        evaluations = train.train_iters // train.eval_interval + 1 if train.eval_interval else 0
        if recipe.stage.name not in DATASET_BUILDERS:
            raise NotImplementedError(
                f"stage={recipe.stage.name}: no dataset for it yet (have {sorted(DATASET_BUILDERS)})")
        train_ds, valid_ds = DATASET_BUILDERS[recipe.stage.name](
            recipe.data,
            seq_length=train.seq_length,
            train_samples=train.train_iters * train.global_batch_size,
            valid_samples=evaluations * train.eval_iters * train.global_batch_size,
            seed=train.seed,
            tokenizer=load_tokenizer(recipe.data.tokenizer),
        )
        self.has_validation = valid_ds is not None and train.eval_iters > 0
        self._train = [self._loader(recipe, train_ds, consumed_samples) for _ in range(num_chunks)]
        self._valid = [self._endless(recipe, valid_ds) for _ in range(num_chunks)] if self.has_validation else []

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

    def _endless(self, recipe: Recipe, dataset) -> Iterator[dict]:
        """Validation batches forever: re-reads the split instead of caching it (itertools.cycle would)."""
        while True:
            yield from self._loader(recipe, dataset, 0)

    def train_iterators(self) -> List[Iterator[dict]]:
        return self._train

    def valid_iterators(self) -> List[Iterator[dict]]:
        return self._valid
