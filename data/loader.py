"""Loaders: each data-parallel rank gets its slice of every global batch, resumable by sample count.

Sample order: global batch b is samples [b*G, (b+1)*G) of the dataset (G = global batch size), whatever the
DP size. Rank r of D takes the contiguous slice [b*G + r*G/D, b*G + (r+1)*G/D) and yields it as G/(D*M)
micro-batches of M. Resuming at `consumed_samples` (a multiple of G) therefore continues with exactly the
samples an uninterrupted run would have seen, and changing D between runs only changes who reads what.

Backends (DataConfig.loader):
- "torch": torch DataLoader with this batch sampler, `num_workers` worker processes, pinned memory on GPU.
- "dali": an NVIDIA DALI pipeline whose external source reads the same micro-batches (in `num_workers`
  parallel Python workers when > 0) and, given a device_id, copies them to the GPU inside the pipeline,
  `prefetch` batches ahead, so the host-to-device copy overlaps the step. device_id=None runs the same
  pipeline on CPU (used by the tests; DALI's CPU-only mode needs no driver).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from data.config import DataConfig

FIELDS = ("tokens", "labels", "loss_mask", "position_ids")
# Per-sample fields, shape [b] once batched: megatron's BlendedDataset tags each sample with its source index.
# DPO pairs (data.preference) carry their index and the reference log-probs ([b, 2]).
PER_SAMPLE_FIELDS = ("dataset_id", "pair", "ref_logps")
DTYPES = {"tokens": np.int64, "labels": np.int64, "loss_mask": np.float32, "position_ids": np.int64,
          "dataset_id": np.int64, "pair": np.int64, "ref_logps": np.float64}  # megatron's dataset_id: np.int16


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices: this rank's micro-batches, global batch after global batch."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 global_batch_size: int, dp_rank: int, dp_size: int) -> None:
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"need 0 <= dp_rank < dp_size, got rank {dp_rank} of {dp_size}")
        if micro_batch_size < 1 or global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"global_batch_size {global_batch_size} must be a multiple of micro_batch_size x dp_size = "
                f"{micro_batch_size} x {dp_size}"
            )
        if consumed_samples % global_batch_size:
            raise ValueError(f"consumed_samples {consumed_samples} is not a multiple of the global batch "
                             f"{global_batch_size}: resume from a checkpoint taken at a step boundary")
        self.total = total_samples
        self.consumed = consumed_samples
        self.micro = micro_batch_size
        self.global_batch = global_batch_size
        self.rank, self.size = dp_rank, dp_size

    def __len__(self) -> int:
        """Micro-batches left (only whole global batches are served)."""
        global_batches = (self.total - self.consumed) // self.global_batch
        return max(0, global_batches) * (self.global_batch // (self.micro * self.size))

    def batch(self, number: int) -> List[int]:
        """Indices of this rank's micro-batch `number` (counted from consumed_samples)."""
        per_global = self.global_batch // (self.micro * self.size)
        global_index, micro_index = divmod(number, per_global)
        first = (self.consumed + global_index * self.global_batch + self.rank * (self.global_batch // self.size)
                 + micro_index * self.micro)
        return list(range(first, first + self.micro))

    def __iter__(self) -> Iterator[List[int]]:
        for number in range(len(self)):
            yield self.batch(number)


def collate(items: List[Dict]) -> Dict[str, torch.Tensor]:
    """Stack the training fields (megatron's dataset_id, when present, too)."""
    keys = [k for k in (*FIELDS, *PER_SAMPLE_FIELDS) if k in items[0]]
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in keys}


def build_loader(dataset, micro_batch_size: int, global_batch_size: int, dp_rank: int, dp_size: int,
                 consumed_samples: int = 0, config: Optional[DataConfig] = None,
                 device_id: Optional[int] = None):
    """An iterable of micro-batch dicts (tokens, labels, loss_mask, position_ids: [micro_batch, seq]; dataset_id:
    [micro_batch] when the dataset is a blend)."""
    config = config if config is not None else DataConfig()
    sampler = GlobalBatchSampler(len(dataset), consumed_samples, micro_batch_size, global_batch_size,
                                 dp_rank, dp_size)
    if config.loader == "dali":
        if device_id is None and torch.cuda.is_available():
            device_id = torch.cuda.current_device()
        return DaliLoader(dataset, sampler, config.num_workers, config.prefetch, device_id)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=config.prefetch if config.num_workers > 0 else None,
        persistent_workers=config.num_workers > 0,
    )


class _BatchSource:
    """DALI external source: micro-batch number -> numpy arrays. Picklable for DALI's parallel workers."""

    def __init__(self, dataset, sampler: GlobalBatchSampler, fields: tuple) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.fields = fields

    def __call__(self, batch_info):
        if batch_info.iteration >= len(self.sampler):
            raise StopIteration
        items = [self.dataset[i] for i in self.sampler.batch(batch_info.iteration)]
        return tuple(np.stack([np.asarray(item[k]) for item in items]).astype(DTYPES[k], copy=False)
                     for k in self.fields)


class DaliLoader:
    """Iterates DALI-produced micro-batches as dicts of torch tensors (on the GPU when device_id is set)."""

    def __init__(self, dataset, sampler: GlobalBatchSampler, num_workers: int, prefetch: int,
                 device_id: Optional[int]) -> None:
        try:
            from nvidia.dali import fn, pipeline_def, types
            from nvidia.dali.plugin.base_iterator import LastBatchPolicy
            from nvidia.dali.plugin.pytorch import DALIGenericIterator
        except ImportError as error:
            raise RuntimeError(
                "data.loader=dali needs NVIDIA DALI: pip install nvidia-dali-cuda130==2.4.0 "
                "(or -cuda120 for CUDA 12 drivers); or set data.loader=torch"
            ) from error
        self._length = len(sampler)
        if not self._length:
            raise ValueError("no micro-batch to serve: the dataset is smaller than one global batch")
        micro = sampler.micro
        parallel = num_workers > 0
        first = dataset[sampler.batch(0)[0]]
        fields = tuple(k for k in (*FIELDS, *PER_SAMPLE_FIELDS) if k in first)
        dtypes = [{np.float32: types.FLOAT, np.float64: types.FLOAT64}.get(DTYPES[k], types.INT64) for k in fields]

        @pipeline_def(batch_size=micro, num_threads=max(1, num_workers), device_id=device_id,
                      prefetch_queue_depth=prefetch, py_num_workers=max(1, num_workers),
                      py_start_method="spawn")
        def pipeline():
            outputs = fn.external_source(
                source=_BatchSource(dataset, sampler, fields), num_outputs=len(fields), batch=True,
                batch_info=True, parallel=parallel, dtype=dtypes,
            )
            return tuple(o.gpu() for o in outputs) if device_id is not None else tuple(outputs)

        self._pipe = pipeline()
        self._pipe.build()
        self._iterator = DALIGenericIterator(self._pipe, list(fields), last_batch_policy=LastBatchPolicy.PARTIAL)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        for outputs in self._iterator:
            yield outputs[0]
