"""Two spec-level modules for megatron-core's local (non-Transformer-Engine) layer spec.

Why they exist: without TE, megatron-core 0.16.1's local spec cannot run two layouts we ship and materialises the
full s x s score matrix (8K tokens, 28 heads: 7.5 GB per layer in fp32) on GPUs.

RMSNorm
    megatron's WrappedTorchNorm asserts `not config.sequence_parallel` (transformer/torch_norm.py:32). The norm
    math does not change under SP (tokens are sharded, the hidden dim is whole); megatron only needs
    `weight.sequence_parallel = True` so finalize_model_grads all-reduces the norm grads over TP
    (distributed/finalize_model_grads.py:354), as its fused norms do.

SDPACoreAttention
    megatron's DotProductAttention refuses context parallelism ("only supported by TEDotProductAttention") and
    is unfused. This core attention runs torch's scaled_dot_product_attention (flash/memory-efficient kernels on
    GPUs, a fused CPU kernel here). Under context parallelism it all-gathers K/V over the CP group (backward:
    reduce-scatter, megatron's own gather_from_sequence_parallel_region) and masks causally on the *global*
    token positions of megatron's load-balanced split (get_batch_on_this_cp_rank: CP rank r holds chunks r and
    2*CP-1-r of 2*CP). That is the all-gather-KV CP algorithm, O(s) memory per rank for K/V rather than TE's
    ring; everything around it (batch and RoPE slicing, loss and grad reduction) is megatron's own code.

    Packed sequences (megatron's `thd` format, PackedSeqParams with cu_seqlens): several documents share one
    row and none may see another. megatron squeezes the batch dimension away (q/k/v arrive as [t, heads, d],
    t = every token of the micro-batch) and applies RoPE per document from cu_seqlens (rope_utils'
    _apply_rotary_pos_emb_thd restarts the positions at each document; its RoPE ignores position_ids). This
    module then runs causal SDPA on each document's slice [cu_seqlens[i], cu_seqlens[i+1]), which is the
    computation the document would get alone: cost sum(len_i^2) instead of t^2. Packing under context
    parallelism would need each document split into 2*CP chunks (TE does that); it is refused here, and the
    recipe validator refuses the combination before anything is built.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


class RMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm with megatron's constructor and sequence-parallel grad marking."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **unused_megatron_kwargs):
        super().__init__(normalized_shape=hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel


def load_balanced_positions(local_len: int, cp_rank: int, cp_size: int, device) -> torch.Tensor:
    """Global token positions held by `cp_rank` under megatron's 2*CP-chunk load-balanced split."""
    chunk = local_len // 2
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, device=device)
    mirror = 2 * cp_size - 1 - cp_rank
    second = torch.arange(mirror * chunk, (mirror + 1) * chunk, device=device)
    return torch.cat([first, second])


class SDPACoreAttention(MegatronModule):
    """Core attention on torch SDPA; context-parallel by all-gathering K/V (see the module docstring)."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        tp_group = getattr(pg_collection, "tp", None) or parallel_state.get_tensor_model_parallel_group()
        self.cp_group = getattr(pg_collection, "cp", None) or parallel_state.get_context_parallel_group()
        tp_size = tp_group.size()
        self.heads_per_rank = config.num_attention_heads // tp_size
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,  # [sq, b, heads, head_dim]
        key: torch.Tensor,  # [sk, b, groups, head_dim]
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],  # megatron convention: True = masked out
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise NotImplementedError(
                "SDPACoreAttention does not support attention bias; "
                "use the Transformer-Engine spec (model.transformer_impl=transformer_engine) for it"
            )
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params)
        seq_q, batch = query.shape[0], query.shape[1]
        cp_size = self.cp_group.size()
        mask = None  # True = may attend (SDPA convention)
        if cp_size > 1:
            key = gather_from_sequence_parallel_region(key, group=self.cp_group)
            value = gather_from_sequence_parallel_region(value, group=self.cp_group)
            q_pos = load_balanced_positions(seq_q, self.cp_group.rank(), cp_size, query.device)
            k_pos = torch.cat(
                [load_balanced_positions(seq_q, r, cp_size, query.device) for r in range(cp_size)]
            )
            mask = k_pos[None, :] <= q_pos[:, None]
        if attention_mask is not None:
            allowed = ~attention_mask.bool()
            if cp_size > 1:  # the mask's keys are in sequence order, the gathered K/V in load-balanced order
                allowed = allowed[..., k_pos]
            if mask is None:
                causal = torch.ones(seq_q, key.shape[0], dtype=torch.bool, device=query.device).tril()
                mask = causal
            mask = mask & allowed
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, head_dim]
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            # megatron's KV-cache decode step passes no_mask: its one new query sees every cached key (SDPA's
            # is_causal would align the triangle top-left and let it see only the first)
            is_causal=mask is None and attn_mask_type != AttnMaskType.no_mask,
            scale=self.softmax_scale,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        return context.permute(2, 0, 1, 3).reshape(seq_q, batch, self.heads_per_rank * self.head_dim)

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, params) -> torch.Tensor:
        """thd: q [t, heads, d], k/v [t, groups, d]; causal attention inside each cu_seqlens document."""
        if params.qkv_format != "thd":
            raise NotImplementedError(f"packed sequences in qkv_format {params.qkv_format!r}; only 'thd' is supported")
        if self.cp_group.size() > 1:
            raise NotImplementedError(
                "packed sequences with context parallelism need the Transformer-Engine spec; "
                "set parallel.cp=1 or data.packing=false"
            )
        bounds = params.cu_seqlens_q.tolist()
        if bounds[0] != 0 or bounds[-1] != query.shape[0] or params.cu_seqlens_kv.tolist() != bounds:
            raise ValueError(f"cu_seqlens {bounds} do not cover the {query.shape[0]} packed tokens (self-attention)")
        outputs = []
        for begin, end in zip(bounds[:-1], bounds[1:]):
            q, k, v = (t[begin:end].transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # [1, h, len, d]
            outputs.append(F.scaled_dot_product_attention(
                q, k, v,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=True,
                scale=self.softmax_scale,
                enable_gqa=k.shape[1] != q.shape[1],
            )[0].transpose(0, 1))
        return torch.cat(outputs).reshape(query.shape[0], self.heads_per_rank * self.head_dim)
