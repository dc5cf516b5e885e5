"""The numbers that size a decoder-only transformer (ModelShape) and its context extension (YarnScaling).

The rows, each family's sizes as their config.json files state them, live with their family
(model/families/qwen2.py); model.families.get_shape finds one by name. Every other module (recipes, planner,
HF conversion, FLOP accounting) reads the same row.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """One decoder-only architecture's sizes (GQA, RoPE); what else it is, its family says (model.families)."""

    name: str
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int  # KV heads
    head_dim: int
    vocab_size: int  # embedding rows (padded), not the tokenizer size
    tied_embeddings: bool
    rms_norm_eps: float
    rope_theta: float = 1_000_000.0  # the released models'; a recipe's shape carries the base its stage trains with
    max_position_embeddings: int = 32_768

    def __post_init__(self):
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"shape {self.name}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_query_groups={self.num_query_groups}; GQA needs whole query groups"
            )

    @property
    def qkv_rows(self) -> int:
        """Output rows of the fused QKV projection (and its bias): (heads + 2 x KV groups) x head_dim; what
        tensor parallelism splits, what the QKV weight and bias count."""
        return (self.num_attention_heads + 2 * self.num_query_groups) * self.head_dim

    def shrink(self, **overrides) -> "ModelShape":
        """A copy with some fields replaced (tests shrink depth/vocab and keep the widths)."""
        return dataclasses.replace(self, **overrides)


TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
"""Layer specs a shape can be built with (model.build); here so configuration can name them without megatron."""


@dataclass(frozen=True)
class YarnScaling:
    """YaRN context extension (Qwen2.5-Coder: factor 4 from 32,768 to 131,072 positions)."""

    factor: float = 4.0
    original_max_position_embeddings: int = 32_768
    beta_fast: float = 32.0
    beta_slow: float = 1.0
