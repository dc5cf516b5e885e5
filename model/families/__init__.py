"""Model families by name: each module here says what makes its architecture itself (model/families/qwen2.py: its
sizes, TransformerConfig fields, Hugging Face tensors and config.json keys, parameter count), and the generic
code (model.config, model.accounting, hf_interop.names) asks `family_of(shape)`.

A second family sits beside qwen2.py with the same names (NAME, SHAPES, RELEASED, transformer_fields,
parameter_breakdown, matmul_parameter_count, the HF_* and hf_* facts) and is registered with register_family
(tests/test_model_families.py registers one); its shape names must not collide with another family's, because a
shape is found by its name.
"""
from __future__ import annotations

from types import ModuleType
from typing import Mapping

from model.families import qwen2
from model.shapes import ModelShape

FAMILIES: dict[str, ModuleType] = {qwen2.NAME: qwen2}
"""Registered families by name."""
DEFAULT_FAMILY = qwen2
"""The family a config.json without a known model_type is read as (its checks then name the model_type)."""

SHAPES: dict[str, ModelShape] = dict(qwen2.SHAPES)
"""Every registered family's sizes by name."""
RELEASED = qwen2.RELEASED
"""The sizes this project trains: Qwen2.5-Coder's six released models."""


def register_family(family: ModuleType) -> ModuleType:
    """Add a family module (the names qwen2.py defines) and its sizes; a size name another family has is refused."""
    taken = sorted(set(family.SHAPES) & {name for other in FAMILIES.values() if other is not family
                                         for name in other.SHAPES})
    if taken:
        raise ValueError(f"family {family.NAME}: shape names {taken} belong to another family; rename them")
    FAMILIES[family.NAME] = family
    SHAPES.update(family.SHAPES)
    return family


def family_of(shape: ModelShape) -> ModuleType:
    """The family whose table holds `shape` by name (a shrunk shape keeps its row's name)."""
    for family in FAMILIES.values():
        if shape.name in family.SHAPES:
            return family
    raise KeyError(f"shape {shape.name!r} is in no model family's table; known: {sorted(SHAPES)}")


def family_of_hf_config(config: Mapping) -> ModuleType:
    """The family whose Hugging Face model_type a config.json dict states; DEFAULT_FAMILY otherwise."""
    model_type = config.get("model_type")
    return next((family for family in FAMILIES.values() if family.HF_MODEL_TYPE == model_type), DEFAULT_FAMILY)


def get_shape(name: str, **overrides) -> ModelShape:
    """Look up a shape by name (e.g. "7b"), optionally shrunk by field overrides."""
    try:
        shape = SHAPES[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model shape {name!r}; choose one of {sorted(SHAPES)}") from None
    return shape.shrink(**overrides) if overrides else shape
