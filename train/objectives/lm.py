"""Next-token prediction: the file, repo and long stages (blended .bin/.idx sources, FIM) and SFT (ChatML turns).

Loss: per-token mean over the whole global batch (TransformerConfig.calculate_per_token_loss): each micro-batch
returns (sum of token losses, token count); megatron sums gradients over micro-batches and data/context ranks
and divides by the global token count in finalize_model_grads. With partial loss masks (FIM padding, SFT prompts)
this is the true mean, unlike averaging micro-batch means.

Packed sequences (data.packing on a packing stage, sft): a row holds several conversations and its position ids
restart at 0 where each begins (data.sft). `pack_micro_batch` turns the micro-batch into megatron's `thd`
format: the rows are concatenated into one sequence of micro x seq tokens ([1, t]), and cu_seqlens marks every
position-0 token as a document start, so attention (model.layers.SDPACoreAttention on the local spec, TE's fused
attention on GPUs) and RoPE restart per conversation; labels and loss_mask are flattened alike, so the loss is
unchanged.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.utils import get_batch_on_this_cp_rank

from data.datasets import blend_sources, build_pretrain_datasets
from data.sft import build_sft_datasets, sft_source
from train.distributed import to_model_device
from train.objectives.base import LOSS_REPORT, SOURCE_REPORT, Objective


def loss_func(loss_mask: torch.Tensor, dataset_id: Optional[torch.Tensor], num_sources: int,
              per_token_loss: torch.Tensor):
    """megatron's 3-tuple loss contract: (summed loss, token count, what to report).

    With the blend's per-sample `dataset_id`, the report also holds (loss sum, tokens) per source
    (SOURCE_REPORT, [num_sources, 2]), so validation is read per source without another pass.
    """
    mask = loss_mask.float()
    losses = per_token_loss.float().reshape(mask.shape) * mask
    loss_sum = losses.sum()
    tokens = mask.sum().to(torch.int)
    reports = {LOSS_REPORT: torch.stack([loss_sum.detach(), tokens.float()])}
    if dataset_id is not None and num_sources:
        per_sample = torch.stack([losses.detach().sum(dim=1), mask.sum(dim=1)], dim=1)
        per_source = torch.zeros(num_sources, 2, dtype=per_sample.dtype, device=per_sample.device)
        reports[SOURCE_REPORT] = per_source.index_add_(0, dataset_id.to(per_sample.device).long(), per_sample)
    return loss_sum, tokens, reports


def split_for_cp_rank(batch: dict) -> dict:
    """This context-parallel rank's share of a micro-batch.

    megatron's get_batch_on_this_cp_rank cuts every field along the sequence dimension; per-sample fields
    (the blend's `dataset_id`, shape [b]) have none, so they pass whole and only [b, s, ...] fields are cut.
    """
    per_sample = {k: v for k, v in batch.items() if v.dim() < 2}
    sliced = get_batch_on_this_cp_rank({k: v for k, v in batch.items() if k not in per_sample})
    return {**sliced, **per_sample}


def pack_micro_batch(batch: dict) -> tuple[dict, PackedSeqParams]:
    """The micro-batch as one `thd` sequence [1, micro x seq]; a document starts at every position id 0."""
    flat = {key: value.reshape(1, -1) for key, value in batch.items()}
    positions = flat["position_ids"][0]
    if positions[0] != 0:
        raise ValueError("a packed row must start a document (position id 0 first)")
    starts = torch.nonzero(positions == 0).flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([positions.numel()])]).to(torch.int32)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                             max_seqlen_q=longest, max_seqlen_kv=longest)
    return flat, params


def forward_step(data_iterator: Iterator[dict], model, packed: bool = False, num_sources: int = 0):
    """Fetch one micro-batch, keep this context-parallel rank's share of it, run the model chunk.

    packed: the rows hold several documents each (see the module docstring); refused with CP > 1 by the
    recipe validator, so there is no context-parallel share to take.
    """
    batch = to_model_device(dict(next(data_iterator)), model)
    params = None
    if packed:
        batch, params = pack_micro_batch(batch)
    else:
        batch = split_for_cp_rank(batch)
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                           packed_seq_params=params)
    return per_token_loss, partial(loss_func, batch["loss_mask"], batch.get("dataset_id"), num_sources)


class NextToken(Objective):
    """file / repo / long: the blended, prepared .bin/.idx sources (data.datasets), FIM applied there."""

    @property
    def packed(self) -> bool:
        return self.spec.packs and self.recipe.data.packing

    def check_sources(self) -> None:
        """The sources' .idx headers, every shard of a glob or directory source."""
        blend_sources(self.recipe.data, self.recipe.model_shape().vocab_size, self.recipe.data.tokenizer)

    def build_datasets(self, **sizes):
        return build_pretrain_datasets(self.recipe.data, **sizes)

    def schedule_shape(self) -> tuple[int, int]:
        seq_length, micro_batch_size = super().schedule_shape()
        if self.packed:  # one [1, micro x seq] sequence flows between pipeline stages
            return seq_length * micro_batch_size, 1
        return seq_length, micro_batch_size

    def forward_step(self, data_iterator: Iterator[dict], model):
        return forward_step(data_iterator, model, packed=self.packed, num_sources=len(self.recipe.data.sources))


class ChatSFT(NextToken):
    """sft: ChatML conversations from one JSONL file (data.sft), loss on the assistant turns, packed rows."""

    def check_sources(self) -> None:
        """The JSONL path."""
        sft_source(self.recipe.data)

    def build_datasets(self, **sizes):
        return build_sft_datasets(self.recipe.data, **sizes)
