"""The model-family seam: a second family, defined here and registered with one call, is built, counted and
converted by the generic code (model.config, model.accounting, hf_interop.names) without any other change.

The family is Qwen2 without the Q/K/V bias (as Llama has it): its own TransformerConfig fields, tensor table,
per-layer HF tensors and parameter count. References: megatron-core's own GPTModel built from the family's
config (parameter count on the meta device; state-dict names of a real CPU build), and the HF tensors going
through megatron and back bit for bit. Negative control: Qwen2's count for the same sizes differs by exactly the
bias rows (L x qkv_rows), so a count that ignored the family would fail.
"""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from model import families
from model.families import qwen2

NAME = "nobias"
SHAPE = dataclasses.replace(qwen2.SHAPES["tiny"], name="nobias-tiny", vocab_size=1024)


def _no_bias_family() -> types.ModuleType:
    family = types.ModuleType(NAME)
    family.__dict__.update({key: value for key, value in vars(qwen2).items() if not key.startswith("__")})
    bias = "self_attention.linear_qkv.bias"

    def parameter_breakdown(shape):
        counts = qwen2.parameter_breakdown(shape)
        return {**counts, "attention": counts["attention"] - shape.num_layers * shape.qkv_rows}

    family.__dict__.update(
        NAME=NAME, SHAPES={SHAPE.name: SHAPE}, RELEASED=(), HF_MODEL_TYPE=NAME,
        transformer_fields=lambda shape: {**qwen2.transformer_fields(shape), "add_qkv_bias": False},
        HF_LAYER_TENSORS=tuple(row for row in qwen2.HF_LAYER_TENSORS if row[1] != bias),
        hf_layer_tensor_shapes=lambda shape: {name: dims for name, dims in qwen2.hf_layer_tensor_shapes(shape).items()
                                              if not name.endswith("_proj.bias")},
        parameter_breakdown=parameter_breakdown,
    )
    return family


@pytest.fixture
def no_bias(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    monkeypatch.setattr(families, "SHAPES", dict(families.SHAPES))
    return families.register_family(_no_bias_family())


def _megatron_model(shape, device: str):
    from model.build import build_gpt_model
    from model.config import transformer_config

    config = transformer_config(shape, use_te=False, use_cpu_initialization=True,
                                perform_initialization=device != "meta")
    with torch.device(device):
        return build_gpt_model(shape, config, max_sequence_length=64)


def test_a_second_family_is_built_counted_and_converted(no_bias, gloo):
    from hf_interop.names import hf_tensor_shapes, hf_to_megatron, load_into_megatron, megatron_to_hf
    from model.accounting import parameter_count
    from train.distributed import init_model_parallel

    init_model_parallel()

    shape = families.get_shape("nobias-tiny")
    assert families.family_of(shape) is no_bias and families.family_of(families.get_shape("tiny")) is qwen2
    built = sum(p.numel() for p in _megatron_model(shape, "meta").parameters())
    assert parameter_count(shape) == built
    assert qwen2.parameter_breakdown(shape)["attention"] - shape.num_layers * shape.qkv_rows == \
        no_bias.parameter_breakdown(shape)["attention"]
    assert sum(qwen2.parameter_breakdown(shape).values()) != built  # negative control: Qwen2's count

    generator = torch.Generator().manual_seed(0)
    hf = {name: torch.randn(dims, generator=generator) for name, dims in hf_tensor_shapes(shape).items()}
    assert not any(name.endswith("bias") for name in hf) and "model.layers.0.self_attn.q_proj.weight" in hf
    mcore = hf_to_megatron(hf, shape)
    model = _megatron_model(shape, "cpu")
    load_into_megatron(model, mcore)  # every name of the real model, no more, no fewer
    state = {name: tensor for name, tensor in model.state_dict().items() if not name.endswith("_extra_state")}
    back = megatron_to_hf(state, shape)
    assert back.keys() == hf.keys() and all(torch.equal(back[name], hf[name]) for name in hf)


def test_a_family_may_not_take_another_familys_size_name(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    clash = _no_bias_family()
    clash.SHAPES = {"7b": qwen2.SHAPES["7b"]}
    with pytest.raises(ValueError, match=r"shape names \['7b'\] belong to another family"):
        families.register_family(clash)
