"""hf_interop.names without models: the QKV layout element by element, named errors, config.json <-> shape.

The layout test writes the expected megatron row order from megatron's definition (per KV group: that group's
r query heads, then its key head, then its value head), independently of pack_qkv's reshapes; the
end-to-end proof that megatron agrees is the logits parity in test_model_hf_parity.py.
"""
from __future__ import annotations

import pytest
import torch

from hf_interop.names import (
    CheckpointMismatchError,
    hf_config_for,
    hf_tensor_shapes,
    hf_to_megatron,
    megatron_to_hf,
    pack_qkv,
    shape_from_hf_config,
    tensor_rules,
    unpack_qkv,
    yarn_from_hf_config,
)
from model.families import RELEASED, get_shape
from model.shapes import YarnScaling

SMALL = get_shape("0.5b", num_layers=2, vocab_size=256)  # 14 heads, 2 KV groups of r=7, head_dim 64


def random_hf_state(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(dims, generator=generator) for name, dims in hf_tensor_shapes(shape).items()}


def test_qkv_rows_are_grouped_query_heads_then_key_then_value():
    shape, hd = SMALL, SMALL.head_dim
    heads, groups = shape.num_attention_heads, shape.num_query_groups
    r = heads // groups
    # label each HF row with (tensor, head, row-in-head) so the packed order can be read back
    q = torch.tensor([[0, h, i] for h in range(heads) for i in range(hd)], dtype=torch.float64)
    k = torch.tensor([[1, g, i] for g in range(groups) for i in range(hd)], dtype=torch.float64)
    v = torch.tensor([[2, g, i] for g in range(groups) for i in range(hd)], dtype=torch.float64)
    expected = []
    for g in range(groups):
        expected += [[0, h, i] for h in range(g * r, (g + 1) * r) for i in range(hd)]
        expected += [[1, g, i] for i in range(hd)] + [[2, g, i] for i in range(hd)]
    assert torch.equal(pack_qkv(q, k, v, shape), torch.tensor(expected, dtype=torch.float64))
    # biases (1-D) follow the same order
    assert torch.equal(pack_qkv(q[:, 1], k[:, 1], v[:, 1], shape), torch.tensor(expected, dtype=torch.float64)[:, 1])
    back = unpack_qkv(pack_qkv(q, k, v, shape), shape)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))
    with pytest.raises(CheckpointMismatchError, match=r"q/k/v rows \(896, 64, 128\)"):
        pack_qkv(q, k[:hd], v, shape)


@pytest.mark.parametrize("te_names", [False, True])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_bit_identical_and_names_follow_the_spec(te_names, tied):
    shape = SMALL.shrink(tied_embeddings=tied)
    hf_state = {k: v.to(torch.bfloat16) for k, v in random_hf_state(shape).items()}
    mcore = hf_to_megatron(hf_state, shape, te_names=te_names)
    assert ("output_layer.weight" in mcore) == (not tied)
    assert ("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight" in mcore) == te_names
    assert ("decoder.layers.1.pre_mlp_layernorm.weight" in mcore) == (not te_names)
    assert "decoder.final_layernorm.weight" in mcore
    assert torch.equal(mcore["decoder.layers.0.mlp.linear_fc1.weight"][: shape.ffn_hidden_size],
                       hf_state["model.layers.0.mlp.gate_proj.weight"])  # gate first, then up
    back = megatron_to_hf(mcore, shape, te_names=te_names)
    assert back.keys() == hf_state.keys()
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], hf_state[k]) for k in hf_state)


def test_tied_model_accepts_an_lm_head_only_when_it_is_the_embedding():
    state = random_hf_state(SMALL)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # what a live tied HF model's state_dict has
    assert "output_layer.weight" not in hf_to_megatron(state, SMALL)
    state["lm_head.weight"] = state["model.embed_tokens.weight"] + 1
    with pytest.raises(CheckpointMismatchError, match="untied"):
        hf_to_megatron(state, SMALL)


def test_missing_extra_and_misshapen_tensors_are_named():
    state = random_hf_state(SMALL)
    del state["model.layers.1.self_attn.k_proj.bias"]
    state["model.layers.2.mlp.up_proj.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"missing 1 tensor\(s\): model.layers.1.self_attn.k_proj.bias"
                       r".*unexpected 1 tensor\(s\): model.layers.2.mlp.up_proj.weight"):
        hf_to_megatron(state, SMALL)
    state = random_hf_state(SMALL.shrink(ffn_hidden_size=4800))
    with pytest.raises(CheckpointMismatchError, match=r"model.layers.0.mlp.down_proj.weight \(896, 4800\) "
                       r"\(expected \(896, 4864\)\)"):
        hf_to_megatron(state, SMALL)
    untied = SMALL.shrink(tied_embeddings=False)
    with pytest.raises(CheckpointMismatchError, match="missing 1 tensor.*lm_head.weight"):
        hf_to_megatron(random_hf_state(SMALL), untied)


def test_megatron_side_errors_point_at_the_norm_naming_and_ignore_extra_state():
    mcore = hf_to_megatron(random_hf_state(SMALL), SMALL, te_names=True)
    mcore["decoder.layers.0.self_attention.linear_qkv._extra_state"] = None  # TE/FP8 metadata
    megatron_to_hf(mcore, SMALL, te_names=True)
    with pytest.raises(CheckpointMismatchError, match="pass te_names=True"):
        megatron_to_hf(mcore, SMALL, te_names=False)


def test_rules_cover_every_tensor_once():
    shape = get_shape("7b", num_layers=3)
    rules = tensor_rules(shape)
    hf_names = [name for rule in rules for name in rule.hf_names]
    assert sorted(hf_names) == sorted(hf_tensor_shapes(shape))
    assert len({rule.megatron_name for rule in rules}) == len(rules) == 3 * 7 + 3  # embedding, final norm, output layer


# ------------------------------------------------------------------------------------------- config.json
# Qwen/Qwen2.5-Coder-7B/config.json as released (transformers 4.43: rope_theta top-level, no head_dim).
RELEASED_7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 152064,
}


@pytest.mark.parametrize("name", RELEASED)
def test_hf_config_round_trips_to_the_same_shape(name):
    shape = get_shape(name)
    assert shape_from_hf_config(hf_config_for(shape).to_dict()) == shape
    yarn = YarnScaling(factor=4.0, original_max_position_embeddings=32768)
    config = hf_config_for(shape, yarn=yarn).to_dict()
    assert config["max_position_embeddings"] == 131072
    assert yarn_from_hf_config(config) == yarn
    assert shape_from_hf_config(config) == shape


def test_released_config_files_and_their_variants():
    assert shape_from_hf_config(RELEASED_7B_CONFIG) == get_shape("7b")
    legacy_yarn = {**RELEASED_7B_CONFIG, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                          "original_max_position_embeddings": 32768}}
    assert yarn_from_hf_config(legacy_yarn) == YarnScaling(4.0, 32768)
    assert yarn_from_hf_config(RELEASED_7B_CONFIG) is None
    # 14B instruct: same tensors as the base model, rms_norm_eps 1e-6 instead of 1e-5
    instruct_14b = hf_config_for(get_shape("14b").shrink(rms_norm_eps=1e-6)).to_dict()
    assert shape_from_hf_config(instruct_14b) == get_shape("14b", rms_norm_eps=1e-6)
    # a shrunk test checkpoint is accepted only when asked for
    shrunk = hf_config_for(get_shape("3b", num_layers=2, vocab_size=1024)).to_dict()
    assert shape_from_hf_config(shrunk, allow_differing=("num_layers", "vocab_size")) == get_shape(
        "3b", num_layers=2, vocab_size=1024)


def test_unsupported_configs_name_the_nearest_shape_and_the_fields():
    wrong = {**RELEASED_7B_CONFIG, "intermediate_size": 18945, "num_key_value_heads": 7}
    with pytest.raises(CheckpointMismatchError, match=r"nearest is 7b.*ffn_hidden_size: 18944 in 7b vs 18945 .*"
                       r"intermediate_size.*num_query_groups: 4 in 7b vs 7"):
        shape_from_hf_config(wrong)
    with pytest.raises(CheckpointMismatchError, match="nearest is 0.5b.*num_layers: 24 in 0.5b vs 2"):
        shape_from_hf_config(hf_config_for(get_shape("0.5b", num_layers=2)).to_dict())
    with pytest.raises(CheckpointMismatchError, match="use_sliding_window"):
        shape_from_hf_config({**RELEASED_7B_CONFIG, "use_sliding_window": True})
    no_original = {**RELEASED_7B_CONFIG, "rope_scaling": {"type": "yarn", "factor": 4.0}}
    with pytest.raises(CheckpointMismatchError, match="original_max_position_embeddings"):
        yarn_from_hf_config(no_original)
    with pytest.raises(CheckpointMismatchError, match="unknown yarn rope parameter.*partial_rotary_factor"):
        yarn_from_hf_config({"rope_scaling": {"type": "yarn", "factor": 4.0, "partial_rotary_factor": 0.5,
                                              "original_max_position_embeddings": 32768}})
    with pytest.raises(CheckpointMismatchError, match="mscale_all_dim"):
        yarn_from_hf_config({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "mscale_all_dim": 1.0,
                                                 "original_max_position_embeddings": 32768}})
