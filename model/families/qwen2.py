"""What makes Qwen2 Qwen2: its sizes, its megatron-core TransformerConfig fields, its Hugging Face tensors and
config.json keys, its parameter count. Everything else (model.build, hf_interop.names' packing and checks,
model.accounting's FLOPs, the planner) is generic decoder code that asks this module through model.families.

Architecture: decoder-only, SwiGLU MLP, RMSNorm, bias on Q/K/V only (no other linear bias), GQA, RoPE
(non-interleaved halves), no dropout. Torch-free at import: recipes/ reads the table and the counts.

Sizes: copied from the released Qwen/Qwen2.5-Coder-*/config.json files (nothing downloads at run time). Facts
that differ from the paper's table (the released weights win): the 0.5B uses head_dim 64 (14 x 64 = 896), the
3B uses ffn 11008. Vocab rows are padded beyond the tokenizer's 151,665 ids: 151,936 for the tied small models
and 152,064 for 7B+. The 14B/32B *base* models use rms_norm_eps 1e-5 (their instruct variants 1e-6). Exact
parameter counts (embedding counted once when tied): 494,032,768 / 1,543,714,304 / 3,085,938,688 /
7,615,616,512 / 14,770,033,664 / 32,763,876,352.
"""
from __future__ import annotations

from model.families.base import GATE_UP, QKV, RENAME
from model.shapes import ModelShape

NAME = "qwen2"

SHAPES: dict[str, ModelShape] = {shape.name: shape for shape in (
    ModelShape(name="0.5b", hidden_size=896, ffn_hidden_size=4864, num_layers=24,  # Qwen/Qwen2.5-Coder-0.5B
               num_attention_heads=14, num_query_groups=2, head_dim=64, vocab_size=151_936, tied_embeddings=True,
               rms_norm_eps=1e-6),
    ModelShape(name="1.5b", hidden_size=1536, ffn_hidden_size=8960, num_layers=28,  # Qwen/Qwen2.5-Coder-1.5B
               num_attention_heads=12, num_query_groups=2, head_dim=128, vocab_size=151_936, tied_embeddings=True,
               rms_norm_eps=1e-6),
    ModelShape(name="3b", hidden_size=2048, ffn_hidden_size=11008, num_layers=36,  # Qwen/Qwen2.5-Coder-3B
               num_attention_heads=16, num_query_groups=2, head_dim=128, vocab_size=151_936, tied_embeddings=True,
               rms_norm_eps=1e-6),
    ModelShape(name="7b", hidden_size=3584, ffn_hidden_size=18944, num_layers=28,  # Qwen/Qwen2.5-Coder-7B
               num_attention_heads=28, num_query_groups=4, head_dim=128, vocab_size=152_064, tied_embeddings=False,
               rms_norm_eps=1e-6),
    ModelShape(name="14b", hidden_size=5120, ffn_hidden_size=13824, num_layers=48,  # Qwen/Qwen2.5-Coder-14B (base)
               num_attention_heads=40, num_query_groups=8, head_dim=128, vocab_size=152_064, tied_embeddings=False,
               rms_norm_eps=1e-5),
    ModelShape(name="32b", hidden_size=5120, ffn_hidden_size=27648, num_layers=64,  # Qwen/Qwen2.5-Coder-32B (base)
               num_attention_heads=40, num_query_groups=8, head_dim=128, vocab_size=152_064, tied_embeddings=False,
               rms_norm_eps=1e-5),
    # Debug shape for CPU tests and the README run: 2 layers, hidden 64, GQA 2:1, the real tokenizer's 151,665 ids
    # padded to 151,680 rows (a multiple of 128, so any TP up to 8 divides it).
    ModelShape(name="tiny", hidden_size=64, ffn_hidden_size=176, num_layers=2, num_attention_heads=4,
               num_query_groups=2, head_dim=16, vocab_size=151_680, tied_embeddings=True, rms_norm_eps=1e-6),
)}
"""Each row as its config.json states it (comment: the Hugging Face repository); rope_theta and
max_position_embeddings are ModelShape's defaults, the released 1,000,000 and 32,768."""
RELEASED = ("0.5b", "1.5b", "3b", "7b", "14b", "32b")


# ------------------------------------------------------------------------------------ megatron-core
def transformer_fields(shape: ModelShape) -> dict:
    """TransformerConfig fields that define the Qwen2 architecture of `shape` (model.config adds the runtime)."""
    import torch.nn.functional as F

    return dict(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.head_dim,
        add_qkv_bias=True,
        add_bias_linear=False,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=shape.rms_norm_eps,
        rotary_interleaved=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
    )


# --------------------------------------------------------------------------------------- accounting
def parameter_breakdown(shape: ModelShape) -> dict[str, int]:
    """Parameters by part; 'output_layer' is 0 for tied shapes (the embedding is counted once).
    Per layer: QKV h*(n+2g)*d + its bias (n+2g)*d, output projection n*d*h, SwiGLU 3*h*f, two RMSNorms 2*h;
    plus the final RMSNorm h (h hidden, f ffn, n heads, g KV groups, d head_dim)."""
    h, d = shape.hidden_size, shape.head_dim
    per_layer_attention = h * shape.qkv_rows + shape.qkv_rows + shape.num_attention_heads * d * h
    return {
        "embedding": shape.vocab_size * h,
        "attention": shape.num_layers * per_layer_attention,
        "mlp": shape.num_layers * 3 * h * shape.ffn_hidden_size,
        "norms": shape.num_layers * 2 * h + h,
        "output_layer": 0 if shape.tied_embeddings else shape.vocab_size * h,
    }


def matmul_parameter_count(shape: ModelShape) -> int:
    """Weights multiplied for every token: QKV, output projection, SwiGLU, plus the (possibly tied) output
    layer; no bias, norm or embedding lookup."""
    h, d, n = shape.hidden_size, shape.head_dim, shape.num_attention_heads
    per_layer = h * shape.qkv_rows + n * d * h + 3 * h * shape.ffn_hidden_size
    return shape.num_layers * per_layer + shape.vocab_size * h


# ------------------------------------------------------------------------------------- Hugging Face
HF_MODEL_TYPE, HF_ARCHITECTURE, HF_CONFIG_CLASS = "qwen2", "Qwen2ForCausalLM", "Qwen2Config"

HF_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
    "tied_embeddings": "tie_word_embeddings",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
}
"""ModelShape field -> config.json key. head_dim is absent from the released files (hidden_size //
num_attention_heads for all six); transformers 5 moves rope_theta into rope_parameters."""
HF_VARIANT_FIELDS = ("rms_norm_eps", "max_position_embeddings")
"""Fields taken from a config.json rather than matched: the 14B/32B instruct models use rms_norm_eps 1e-6 where
the base models use 1e-5 (same tensors), and the context length changes no tensor."""

HF_LAYER_TENSORS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("input_layernorm.weight",), "input_layernorm.weight", RENAME),
    (("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
     "self_attention.linear_qkv.weight", QKV),
    (("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
     "self_attention.linear_qkv.bias", QKV),
    (("self_attn.o_proj.weight",), "self_attention.linear_proj.weight", RENAME),
    (("post_attention_layernorm.weight",), "pre_mlp_layernorm.weight", RENAME),
    (("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.linear_fc1.weight", GATE_UP),
    (("mlp.down_proj.weight",), "mlp.linear_fc2.weight", RENAME),
)
"""Per layer: HF names under "model.layers.{i}.", the megatron-core GPTModel name under "decoder.layers.{i}."
(local spec; hf_interop.names renames the two norms for the Transformer-Engine spec), how they combine
(model.families.base)."""
HF_EMBEDDING, HF_FINAL_NORM, HF_OUTPUT = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


def hf_layer_tensor_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Every HF tensor of one layer with its shape, e.g. 7B self_attn.q_proj.weight (3584, 3584)."""
    h, ffn = shape.hidden_size, shape.ffn_hidden_size
    q_rows, kv_rows = shape.num_attention_heads * shape.head_dim, shape.num_query_groups * shape.head_dim
    return {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q_rows, h), "self_attn.q_proj.bias": (q_rows,),
        "self_attn.k_proj.weight": (kv_rows, h), "self_attn.k_proj.bias": (kv_rows,),
        "self_attn.v_proj.weight": (kv_rows, h), "self_attn.v_proj.bias": (kv_rows,),
        "self_attn.o_proj.weight": (h, q_rows),
        "mlp.gate_proj.weight": (ffn, h), "mlp.up_proj.weight": (ffn, h), "mlp.down_proj.weight": (h, ffn),
    }


def unsupported_hf_config(config) -> list[str]:
    """Qwen2 features of a config.json dict this project's model does not implement, each named."""
    problems = []
    if config.get("model_type", HF_MODEL_TYPE) != HF_MODEL_TYPE:
        problems.append(f"model_type={config['model_type']!r} (expected {HF_MODEL_TYPE!r})")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config['hidden_act']!r} (expected 'silu')")
    if config.get("use_sliding_window", False):
        problems.append("use_sliding_window=true (Qwen2.5-Coder uses full attention)")
    return problems


def hf_config_fields(shape: ModelShape) -> dict:
    """config.json fields of `shape` other than RoPE and the context length (hf_interop.names adds those)."""
    fields = dict(
        architectures=[HF_ARCHITECTURE],
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_query_groups,
        hidden_act="silu",
        rms_norm_eps=shape.rms_norm_eps,
        tie_word_embeddings=shape.tied_embeddings,
        use_sliding_window=False,
        max_window_layers=shape.num_layers,
        attention_dropout=0.0,
    )
    if shape.head_dim != shape.hidden_size // shape.num_attention_heads:
        fields["head_dim"] = shape.head_dim
    return fields
