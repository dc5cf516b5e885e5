"""Logits parity with transformers' Qwen2ForCausalLM through hf_interop.names.

Every released shape shrunk to 2 layers (widths, heads, KV groups, head_dim and tying kept; vocab 1024/2048),
random weights with random biases and norm weights, fp32 on the CPU. Limits (docs/testing.md):
max|diff| <= 1e-4 absolute AND <= 1e-5 of the largest logit; measured here ~3e-6 / ~7e-7. The negative
controls show that a wrong QKV layout (weights or only biases), swapped gate/up or a norm eps of 1e-5
instead of 1e-6 (~2e-2 relative) all fail these limits by orders of magnitude.
Cost on 2 cores: ~45 s for the six shapes, dominated by the 32B widths (~1e9 parameters in each model).
"""
from __future__ import annotations

import pytest
import torch

from model.build import transformer_engine_error
from hf_interop.names import hf_to_megatron, load_into_megatron, megatron_to_hf
from model.families import RELEASED, get_shape
from model.shapes import YarnScaling
from tests.hf_reference import (
    MAX_REL_DIFF,
    assert_logits_match,
    build_megatron,
    logits_difference,
    random_hf_model,
    random_tokens,
)
from train.distributed import init_model_parallel


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    init_model_parallel()


def shrunk(name: str, **overrides):
    shape = get_shape(name)
    return shape.shrink(num_layers=2, vocab_size=1024 if shape.tied_embeddings else 2048, **overrides)


def hf_logits(hf, tokens, positions):
    with torch.no_grad():
        return hf(input_ids=tokens, position_ids=positions).logits


def megatron_logits(model, tokens, positions):
    with torch.no_grad():
        return model(tokens, positions, None)


@pytest.mark.parametrize("name", RELEASED)
def test_logits_match_transformers_and_the_map_inverts(name):
    shape = shrunk(name)
    hf = random_hf_model(shape)
    tokens, positions = random_tokens(shape, batch=2, seq=32)
    reference = hf_logits(hf, tokens, positions)

    model = build_megatron(shape)
    load_into_megatron(model, hf_to_megatron(hf.state_dict(), shape))
    assert_logits_match(megatron_logits(model, tokens, positions), reference, f"{name} (2 layers)")

    # reverse: megatron -> HF gives back exactly the tensors a released HF file holds (no lm_head when tied)
    hf_files = {k: v for k, v in hf.state_dict().items() if not (shape.tied_embeddings and k == "lm_head.weight")}
    exported = megatron_to_hf(model.state_dict(), shape)
    assert exported.keys() == hf_files.keys()
    unequal = [k for k in hf_files if not torch.equal(exported[k], hf_files[k])]
    assert not unequal, f"megatron -> HF changed {unequal}"


def plain_concat_qkv(hf_state, mcore_state, what: str):
    """The classic conversion bug: linear_qkv = [all q; all k; all v] instead of per KV group."""
    for key in list(mcore_state):
        if ".linear_qkv." in key and key.endswith(what):
            hf_prefix = key.replace("decoder.layers.", "model.layers.").split(".self_attention")[0]
            mcore_state[key] = torch.cat([hf_state[f"{hf_prefix}.self_attn.{p}_proj.{what}"] for p in "qkv"])


def swap_gate_and_up(hf_state, mcore_state):
    for key in list(mcore_state):
        if key.endswith("linear_fc1.weight"):
            gate, up = mcore_state[key].chunk(2)
            mcore_state[key] = torch.cat([up, gate])


@pytest.mark.parametrize("mistake", ["qkv weights+biases plain concat", "qkv biases plain concat",
                                     "fc1 = cat(up, gate)", "norm eps 1e-5 instead of 1e-6"])
def test_layout_and_config_mistakes_fail_the_limits(mistake):
    shape = shrunk("0.5b")  # 14 heads in 2 KV groups: a plain concat has the right shape, wrong order
    hf = random_hf_model(shape)
    tokens, positions = random_tokens(shape, batch=2, seq=32)
    reference = hf_logits(hf, tokens, positions)
    hf_state = hf.state_dict()
    mcore_state = hf_to_megatron(hf_state, shape)
    megatron_shape = shape
    if mistake.startswith("qkv weights"):
        plain_concat_qkv(hf_state, mcore_state, "weight")
        plain_concat_qkv(hf_state, mcore_state, "bias")
    elif mistake.startswith("qkv biases"):
        plain_concat_qkv(hf_state, mcore_state, "bias")
    elif mistake.startswith("fc1"):
        swap_gate_and_up(hf_state, mcore_state)
    else:
        megatron_shape = shape.shrink(rms_norm_eps=1e-5)
    model = build_megatron(megatron_shape)
    load_into_megatron(model, mcore_state)
    _, relative = logits_difference(megatron_logits(model, tokens, positions), reference)
    assert relative > 100 * MAX_REL_DIFF, f"{mistake} went unnoticed: relative diff {relative:.3g}"


@pytest.mark.parametrize("name", ["0.5b", "1.5b"])  # head_dim 64 and 128: YaRN's ramp depends on it
def test_yarn_matches_transformers_beyond_the_original_context(name):
    original = 32  # small, so a 128-token sequence runs 4x past it, as 131,072 does past 32,768
    yarn = YarnScaling(factor=4.0, original_max_position_embeddings=original)
    shape = shrunk(name, max_position_embeddings=original)
    seq = int(original * yarn.factor)
    hf = random_hf_model(shape, yarn=yarn)
    assert hf.config.rope_parameters["rope_type"] == "yarn"
    tokens, positions = random_tokens(shape, batch=1, seq=seq)
    reference = hf_logits(hf, tokens, positions)
    mcore_state = hf_to_megatron(hf.state_dict(), shape)

    model = build_megatron(shape, yarn=yarn, max_sequence_length=seq)
    load_into_megatron(model, mcore_state)
    assert_logits_match(megatron_logits(model, tokens, positions), reference, f"{name} YaRN x4")

    plain_rope = build_megatron(shape, max_sequence_length=seq)  # control: the scaling matters here
    load_into_megatron(plain_rope, mcore_state)
    _, relative = logits_difference(megatron_logits(plain_rope, tokens, positions), reference)
    assert relative > 100 * MAX_REL_DIFF


@pytest.mark.gpu
def test_transformer_engine_spec_matches_transformers_with_te_names():
    reason = transformer_engine_error()
    if reason is not None:
        pytest.skip(f"Transformer Engine spec not runnable here: {reason}")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity: TF32 alone moves logits by ~1e-3
    torch.backends.cudnn.allow_tf32 = False
    shape = shrunk("7b")  # untied, 28 heads in 4 KV groups
    hf = random_hf_model(shape, device="cuda")
    tokens, positions = random_tokens(shape, batch=2, seq=32, device="cuda")
    reference = hf_logits(hf, tokens, positions)

    model = build_megatron(shape, transformer_impl="transformer_engine").cuda()
    load_into_megatron(model, hf_to_megatron(hf.state_dict(), shape, te_names=True))
    assert_logits_match(megatron_logits(model, tokens, positions), reference, "7b (2 layers), TE spec")
    exported = megatron_to_hf(model.state_dict(), shape, te_names=True)
    assert all(torch.equal(exported[k], v) for k, v in hf.state_dict().items())
