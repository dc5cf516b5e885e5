"""Loaders: each DP rank gets its slice of every global batch, the union over ranks is the global batch for
any DP size, resuming at a consumed-sample count continues the uninterrupted sequence; torch DataLoader
(0 and 2 workers) and the DALI pipeline on CPU (device_id=None) give identical micro-batches."""
import numpy as np
import pytest
import torch

from data.config import DataConfig
from data.loader import FIELDS, GlobalBatchSampler, build_loader


class Indexed(torch.utils.data.Dataset):
    """Item i is recognisable from its tokens (i*100 + position), shaped like GPTDataset's items."""

    def __init__(self, n: int, seq: int = 8) -> None:
        self.n, self.seq = n, seq

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        tokens = torch.arange(self.seq, dtype=torch.long) + 100 * int(i)
        return {"tokens": tokens, "labels": tokens + 1, "loss_mask": torch.ones(self.seq),
                "position_ids": torch.arange(self.seq, dtype=torch.long)}


def rank_batches(total, consumed, micro, global_batch, rank, size):
    return list(GlobalBatchSampler(total, consumed, micro, global_batch, rank, size))


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_each_rank_gets_its_slice_of_every_global_batch(dp):
    total, micro, global_batch = 100, 2, 16
    per_rank = [rank_batches(total, 0, micro, global_batch, r, dp) for r in range(dp)]
    steps = total // global_batch
    per_global = global_batch // (micro * dp)
    for rank in range(dp):
        assert len(per_rank[rank]) == steps * per_global
    for step in range(steps):
        seen = sorted(i for rank in range(dp) for batch in per_rank[rank][step * per_global:(step + 1) * per_global]
                      for i in batch)
        assert seen == list(range(step * global_batch, (step + 1) * global_batch))


def test_resume_continues_the_uninterrupted_sequence():
    full = rank_batches(100, 0, 2, 8, 1, 2)
    resumed = rank_batches(100, 40, 2, 8, 1, 2)
    assert resumed == full[len(full) - len(resumed):] and len(full) - len(resumed) == 10
    with pytest.raises(ValueError, match="step boundary"):
        GlobalBatchSampler(100, 20, 2, 8, 0, 2)
    with pytest.raises(ValueError, match="multiple of micro_batch_size x dp_size"):
        GlobalBatchSampler(100, 0, 3, 8, 0, 2)


def batches_of(loader):
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_loader(workers):
    cfg = DataConfig(num_workers=workers)
    batches = batches_of(build_loader(Indexed(64), 2, 8, dp_rank=1, dp_size=2, consumed_samples=16, config=cfg))
    assert len(batches) == 12
    assert batches[0]["tokens"][:, 0].tolist() == [2000, 2100]  # samples 20, 21: rank 1's half of batch 2
    assert all(batch[k].shape == (2, 8) for batch in batches for k in FIELDS)


@pytest.mark.dali
def test_dali_pipeline_on_cpu_matches_torch(dali):
    dataset = Indexed(64)
    torch_batches = batches_of(build_loader(dataset, 2, 8, 0, 2, 8, DataConfig(num_workers=0)))
    dali = build_loader(dataset, 2, 8, 0, 2, 8, DataConfig(loader="dali", num_workers=0), device_id=None)
    dali_batches = batches_of(dali)
    assert len(dali_batches) == len(torch_batches) == len(dali) == 14
    for a, b in zip(dali_batches, torch_batches):
        for k in FIELDS:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.dali
def test_dali_parallel_workers_on_cpu(dali):
    """num_workers > 0: DALI's parallel external source (spawned Python workers) gives the same batches."""
    dataset = Indexed(64)
    expected = batches_of(build_loader(dataset, 2, 8, 1, 2, 0, DataConfig(num_workers=0)))
    got = batches_of(build_loader(dataset, 2, 8, 1, 2, 0, DataConfig(loader="dali", num_workers=2), device_id=None))
    assert len(got) == len(expected) == 16
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, expected) for k in FIELDS)


class Blended(Indexed):
    """Like megatron's BlendedDataset: each item also carries its source's index as an np.int16 scalar."""

    def __getitem__(self, i):
        return {**super().__getitem__(i), "dataset_id": np.int16(i % 3)}


@pytest.mark.parametrize("loader", ["torch", pytest.param("dali", marks=pytest.mark.dali)])
def test_per_sample_dataset_id_is_batched_per_sample(request, loader):
    """dataset_id comes out as [micro_batch] (one per sample, no sequence dim) from both loaders."""
    if loader == "dali":
        request.getfixturevalue("dali")
    batches = batches_of(build_loader(Blended(64), 2, 8, 1, 2, 8, DataConfig(loader=loader, num_workers=0),
                                      device_id=None))
    assert len(batches) == 14
    assert all(batch["dataset_id"].shape == (2,) for batch in batches)
    assert [batch["dataset_id"].tolist() for batch in batches[:2]] == [[12 % 3, 13 % 3], [14 % 3, 15 % 3]]
    assert batches[0]["tokens"][:, 0].tolist() == [1200, 1300]
