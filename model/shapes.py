"""The Qwen2.5-Coder architectures: one table, copied from the released config.json files.

Why a table and not the HF hub: nothing may download at run time, and every other module (recipes, planner,
HF conversion, FLOP accounting) must agree on one set of numbers.

Facts that differ from the paper's table (the released weights win): the 0.5B uses head_dim 64 (14 x 64 = 896),
the 3B uses ffn 11008. Vocab rows are padded beyond the tokenizer's 151,665 ids: 151,936 for the tied small
models and 152,064 for 7B+. The 14B/32B *base* models use rms_norm_eps 1e-5 (their instruct variants 1e-6).
Exact parameter counts (embedding counted once when tied): 494,032,768 / 1,543,714,304 / 3,085,938,688 /
7,615,616,512 / 14,770,033,664 / 32,763,876,352.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """One decoder-only Qwen2 architecture (SwiGLU MLP, RMSNorm, QKV bias only, GQA, RoPE)."""

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


SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        # Qwen/Qwen2.5-Coder-0.5B/config.json
        ModelShape("0.5b", 896, 4864, 24, 14, 2, 64, 151_936, True, 1e-6),
        # Qwen/Qwen2.5-Coder-1.5B/config.json
        ModelShape("1.5b", 1536, 8960, 28, 12, 2, 128, 151_936, True, 1e-6),
        # Qwen/Qwen2.5-Coder-3B/config.json
        ModelShape("3b", 2048, 11008, 36, 16, 2, 128, 151_936, True, 1e-6),
        # Qwen/Qwen2.5-Coder-7B/config.json
        ModelShape("7b", 3584, 18944, 28, 28, 4, 128, 152_064, False, 1e-6),
        # Qwen/Qwen2.5-Coder-14B/config.json (base; the instruct model uses 1e-6)
        ModelShape("14b", 5120, 13824, 48, 40, 8, 128, 152_064, False, 1e-5),
        # Qwen/Qwen2.5-Coder-32B/config.json (base; the instruct model uses 1e-6)
        ModelShape("32b", 5120, 27648, 64, 40, 8, 128, 152_064, False, 1e-5),
        # Debug shape for CPU tests and the README run: 2 layers, hidden 64, GQA 2:1, the real tokenizer's
        # 151,665 ids padded to 151,680 rows (a multiple of 128, so any TP up to 8 divides it).
        ModelShape("tiny", 64, 176, 2, 4, 2, 16, 151_680, True, 1e-6),
    )
}

RELEASED = ("0.5b", "1.5b", "3b", "7b", "14b", "32b")

TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
"""Layer specs a shape can be built with (model.build); here so configuration can name them without megatron."""


@dataclass(frozen=True)
class YarnScaling:
    """YaRN context extension (Qwen2.5-Coder: factor 4 from 32,768 to 131,072 positions)."""

    factor: float = 4.0
    original_max_position_embeddings: int = 32_768
    beta_fast: float = 32.0
    beta_slow: float = 1.0


def get_shape(name: str, **overrides) -> ModelShape:
    """Look up a shape by name (e.g. "7b"), optionally shrunk by field overrides."""
    try:
        shape = SHAPES[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model shape {name!r}; choose one of {sorted(SHAPES)}") from None
    return shape.shrink(**overrides) if overrides else shape
