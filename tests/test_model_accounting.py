"""Parameter and FLOP accounting against independent references.

- Parameter counts: our megatron GPTModel and transformers' Qwen2ForCausalLM, both built on the meta device
  (no memory, ~1 s even for the 32B), must equal the exact released counts and model.accounting's formula.
- FLOPs: torch's FlopCounterMode counts every matmul of a real forward+backward of transformers' Qwen2 (eager
  attention computes the full s x s square, like megatron's MFU convention); model.accounting must agree.
"""
from __future__ import annotations

import pytest
import torch

from model.accounting import (
    achieved_tflops,
    matmul_parameter_count,
    model_flops_utilization,
    parameter_breakdown,
    parameter_count,
    training_flops_per_token,
)
from model.build import build_gpt_model
from model.config import transformer_config
from hf_interop.names import hf_config_for
from model.families import RELEASED, get_shape
from train.distributed import init_model_parallel

# Exact counts; the model cards round them ("0.49B" ... "32.5B").
RELEASED_PARAMETER_COUNTS = {
    "0.5b": 494_032_768,
    "1.5b": 1_543_714_304,
    "3b": 3_085_938_688,
    "7b": 7_615_616_512,
    "14b": 14_770_033_664,
    "32b": 32_763_876_352,
}

# rms_norm_eps and rope_theta exactly as the released Qwen/Qwen2.5-Coder-{0.5B..32B}/config.json files state them
# (the 14B/32B base models use 1e-5; their instruct variants 1e-6).
RELEASED_EPS_AND_ROPE_THETA = {
    "0.5b": (1e-6, 1_000_000.0),
    "1.5b": (1e-6, 1_000_000.0),
    "3b": (1e-6, 1_000_000.0),
    "7b": (1e-6, 1_000_000.0),
    "14b": (1e-5, 1_000_000.0),
    "32b": (1e-5, 1_000_000.0),
}


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    init_model_parallel()


def megatron_count_on_meta(shape) -> int:
    # use_cpu_initialization=True makes megatron allocate without an explicit device, so the meta device
    # context applies (the GPU path names the current CUDA device); no init kernels run on meta anyway.
    config = transformer_config(shape, use_te=False, use_cpu_initialization=True, perform_initialization=False)
    with torch.device("meta"):
        model = build_gpt_model(shape, config, max_sequence_length=4096)
    assert all(p.is_meta for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


def hf_count_on_meta(shape) -> int:
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(hf_config_for(shape))
    return sum(p.numel() for p in model.parameters())  # a tied lm_head shares embed_tokens' Parameter


@pytest.mark.parametrize("name", RELEASED)
def test_parameter_count_matches_megatron_transformers_and_formula(name):
    shape = get_shape(name)
    expected = RELEASED_PARAMETER_COUNTS[name]
    assert hf_count_on_meta(shape) == expected
    assert megatron_count_on_meta(shape) == expected
    assert parameter_count(shape) == expected


@pytest.mark.parametrize("name", RELEASED)
def test_eps_and_rope_theta_are_the_released_values(name):
    """The table's eps and RoPE base reach megatron: the TransformerConfig's eps and GPTModel's rotary base."""
    eps, theta = RELEASED_EPS_AND_ROPE_THETA[name]
    shape = get_shape(name)
    assert (shape.rms_norm_eps, shape.rope_theta) == (eps, theta)
    small = shape.shrink(num_layers=1, vocab_size=512)
    config = transformer_config(small, use_te=False, use_cpu_initialization=True, perform_initialization=False)
    assert config.layernorm_epsilon == eps
    with torch.device("meta"):
        model = build_gpt_model(small, config, max_sequence_length=128)
    assert model.rotary_base == theta  # megatron's own default is 10000


def test_tied_embedding_counted_once():
    tied = get_shape("0.5b")
    untied = tied.shrink(tied_embeddings=False)
    embedding = tied.vocab_size * tied.hidden_size
    assert parameter_breakdown(tied)["output_layer"] == 0
    assert parameter_count(untied) - parameter_count(tied) == embedding
    # ... but the output matmul runs either way
    assert matmul_parameter_count(untied) == matmul_parameter_count(tied)


@pytest.mark.parametrize("shape_name, tied", [("tiny", True), ("0.5b", False)])
def test_training_flops_match_counted_matmuls(shape_name, tied):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen2ForCausalLM

    shape = get_shape(shape_name, num_layers=2, vocab_size=512, tied_embeddings=tied)
    batch, seq = 2, 48
    config = hf_config_for(shape)
    config._attn_implementation = "eager"  # full score matrix, as the convention counts it
    model = Qwen2ForCausalLM(config)
    tokens = torch.randint(0, shape.vocab_size, (batch, seq))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=tokens, labels=tokens).loss.backward()
    counted = counter.get_total_flops()
    assert counted == batch * seq * training_flops_per_token(shape, seq)
    # the causal variant only halves the attention term
    attention = 12 * shape.num_layers * seq * shape.num_attention_heads * shape.head_dim
    assert training_flops_per_token(shape, seq, causal=True) == training_flops_per_token(shape, seq) - attention / 2


def test_flops_numbers_quoted_in_the_docstring():
    seven_b = get_shape("7b")
    assert training_flops_per_token(seven_b, 4096) / 1e9 == pytest.approx(47.35, abs=0.005)
    assert training_flops_per_token(seven_b, 32768) / 1e9 == pytest.approx(81.88, abs=0.005)
    assert achieved_tflops(10_000, seven_b, 4096) == pytest.approx(473.5, abs=0.05)
    assert model_flops_utilization(10_000, seven_b, 4096, peak_tflops_per_gpu=989) == pytest.approx(0.479, abs=1e-3)
