"""Hugging Face <-> megatron-core GPTModel: tensor names, layouts and config.json, in one place.

Everything the HF interop needs to know about the two formats lives here (hf_interop.convert imports it), so
a fact fixed once is fixed for import, export and the parity tests alike. What is a family's own (Qwen2's
tensor names and kinds, config.json keys, the features it refuses) is its module's (model/families/qwen2.py);
this module implements the kinds (model.families.base) and the checks for any family.

Tensors (full, unsharded TP1/PP1 state dicts; megatron's dist checkpoint reshards later):
- Most tensors are only renamed (the family's HF_LAYER_TENSORS, plus embedding/final norm/output in
  `tensor_rules`).
  The local spec names the norms `input_layernorm` / `pre_mlp_layernorm`; the Transformer-Engine spec fuses
  them into the next linear as `self_attention.linear_qkv.layer_norm_weight` /
  `mlp.linear_fc1.layer_norm_weight` (`te_names=True`).
- QKV (weights AND biases): megatron keeps one `linear_qkv` laid out per KV group, [r query heads, k_g, v_g]
  for each of the G groups (r = heads / G; 0.5B: G=2, r=7, head_dim 64 -> 2 blocks of 576 rows). A plain
  concat [all q; all k; all v] has the same shape and loads silently; it is only visible in the logits.
- MLP: linear_fc1 = cat(gate_proj, up_proj) along the output dim (megatron's SwiGLU splits it in that order).
- Tied models (0.5B/1.5B/3B): megatron has no output_layer.weight and the released HF files have no
  lm_head.weight; an HF state dict taken from a live model does carry lm_head.weight, which is accepted
  only when it equals embed_tokens (otherwise the checkpoint is not tied and the shape is wrong).
No tensor is cast or copied except the two concatenations, so HF -> megatron -> HF is bit-identical.
Inputs are Mappings, so a lazy safetensors view works as well as a dict.

Config (config.json <-> ModelShape): `hf_config_for(shape)` builds the family's transformers config;
`shape_from_hf_config(config_dict)` finds the released shape a config.json describes and names the nearest
shape and the differing fields when none does. transformers 5 moved `rope_theta` (and rope_scaling) into
`rope_parameters`; released files (transformers 4.43) keep them top-level; both are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Optional

import torch

from model.families import family_of, family_of_hf_config
from model.families.base import GATE_UP, QKV, RENAME
from model.shapes import ModelShape, YarnScaling


class CheckpointMismatchError(ValueError):
    """A state dict or config.json that does not fit the expected shape (names the offending tensors/fields)."""


@dataclass(frozen=True)
class TensorRule:
    """One megatron tensor and the HF tensor(s) it is made of."""

    hf_names: tuple[str, ...]
    megatron_name: str
    kind: str  # RENAME: one HF tensor; QKV: (q, k, v) per KV group; GATE_UP: cat(gate, up)


# The Transformer-Engine spec has IdentityOp norms: their weights live inside TELayerNormColumnParallelLinear.
_TE_NORM_NAMES = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
                  "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def tensor_rules(shape: ModelShape, te_names: bool = False) -> list[TensorRule]:
    """Every megatron tensor of `shape` with its HF source(s), in model order."""
    family = family_of(shape)
    rules = [TensorRule((family.HF_EMBEDDING,), "embedding.word_embeddings.weight", RENAME)]
    for layer in range(shape.num_layers):
        hf_prefix, megatron_prefix = f"model.layers.{layer}.", f"decoder.layers.{layer}."
        for hf_names, megatron_name, kind in family.HF_LAYER_TENSORS:
            if te_names:
                megatron_name = _TE_NORM_NAMES.get(megatron_name, megatron_name)
            rules.append(TensorRule(tuple(hf_prefix + name for name in hf_names), megatron_prefix + megatron_name,
                                    kind))
    rules.append(TensorRule((family.HF_FINAL_NORM,), "decoder.final_layernorm.weight", RENAME))
    if not shape.tied_embeddings:
        rules.append(TensorRule((family.HF_OUTPUT,), "output_layer.weight", RENAME))
    return rules


def hf_tensor_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Expected shape of every HF tensor (lm_head only when untied), e.g. 7B q_proj.weight (3584, 3584)."""
    family, h = family_of(shape), shape.hidden_size
    shapes = {family.HF_EMBEDDING: (shape.vocab_size, h), family.HF_FINAL_NORM: (h,)}
    for layer in range(shape.num_layers):
        shapes.update({f"model.layers.{layer}.{name}": dims
                       for name, dims in family.hf_layer_tensor_shapes(shape).items()})
    if not shape.tied_embeddings:
        shapes[family.HF_OUTPUT] = (shape.vocab_size, h)
    return shapes


def _megatron_shape(rule: TensorRule, hf_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    parts = [hf_shapes[name] for name in rule.hf_names]
    if rule.kind == RENAME:
        return parts[0]
    return (sum(p[0] for p in parts), *parts[0][1:])  # QKV and GATE_UP stack along the output dim


# ----------------------------------------------------------------------------------------------- layouts
def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """HF q/k/v (weights [rows, hidden] or biases [rows]) -> megatron linear_qkv, [r q heads, k, v] per group."""
    groups, head_dim = shape.num_query_groups, shape.head_dim
    expected_rows = (shape.num_attention_heads * head_dim, groups * head_dim, groups * head_dim)
    if (q.shape[0], k.shape[0], v.shape[0]) != expected_rows:
        raise CheckpointMismatchError(
            f"q/k/v rows {(q.shape[0], k.shape[0], v.shape[0])} do not fit shape {shape.name} "
            f"(expected {expected_rows})"
        )
    rest = q.shape[1:]
    per_group = [t.reshape(groups, -1, *rest) for t in (q, k, v)]  # q: r*head_dim rows; k, v: head_dim rows
    return torch.cat(per_group, dim=1).reshape(-1, *rest)


def unpack_qkv(qkv: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of pack_qkv: megatron linear_qkv -> contiguous HF (q, k, v)."""
    groups, head_dim = shape.num_query_groups, shape.head_dim
    q_rows = shape.num_attention_heads // groups * head_dim
    if qkv.shape[0] != shape.qkv_rows:
        raise CheckpointMismatchError(f"linear_qkv has {qkv.shape[0]} rows; shape {shape.name} needs {shape.qkv_rows}")
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, q_rows + 2 * head_dim, *rest)
    q, k, v = grouped.split([q_rows, head_dim, head_dim], dim=1)
    return tuple(t.reshape(-1, *rest).contiguous() for t in (q, k, v))


# ---------------------------------------------------------------------------------------- state dicts
def _listing(names, limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_names(present: Collection[str], expected: Collection[str], what: str, hint: str = "") -> None:
    missing, extra = set(expected) - set(present), set(present) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_listing(missing)}")
    if extra:
        problems.append(f"unexpected {len(extra)} tensor(s): {_listing(extra)}")
    if problems:
        raise CheckpointMismatchError(f"{what}: " + "; ".join(problems) + hint)


def _check_shapes(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    wrong = [f"{name} {tuple(state[name].shape)} (expected {dims})"
             for name, dims in expected.items() if tuple(state[name].shape) != tuple(dims)]
    if wrong:
        raise CheckpointMismatchError(f"{what}: {len(wrong)} tensor(s) with the wrong shape: {_listing(wrong)}")


def _drop_tied_copy(state: Mapping[str, torch.Tensor], copy_name: str, source_name: str, shape: ModelShape):
    """Names of `state` without the output-layer copy of a tied embedding (refused if it is not a copy)."""
    names = set(state.keys())
    if shape.tied_embeddings and copy_name in names:
        if source_name in names and not torch.equal(state[copy_name], state[source_name]):
            raise CheckpointMismatchError(
                f"shape {shape.name} ties the embeddings, but {copy_name} differs from {source_name}: "
                "this checkpoint is untied; use an untied shape"
            )
        names.discard(copy_name)
    return names


def _spec_hint(names: Collection[str], te_names: bool) -> str:
    te_present = any(n.endswith("linear_qkv.layer_norm_weight") for n in names)
    local_present = any(n.endswith(".input_layernorm.weight") for n in names)
    if te_present and not te_names:
        return " (the norms use Transformer-Engine names: pass te_names=True)"
    if local_present and te_names:
        return " (the norms use local-spec names: pass te_names=False)"
    return ""


def hf_to_megatron(
    hf_state_dict: Mapping[str, torch.Tensor], shape: ModelShape, te_names: bool = False
) -> dict[str, torch.Tensor]:
    """HF Qwen2ForCausalLM state dict -> full megatron GPTModel state dict (no `_extra_state` entries)."""
    what = f"HF state dict for shape {shape.name}"
    family = family_of(shape)
    names = {n for n in _drop_tied_copy(hf_state_dict, family.HF_OUTPUT, family.HF_EMBEDDING, shape)
             if not n.endswith("rotary_emb.inv_freq")}  # a derived buffer some old exports saved
    expected = hf_tensor_shapes(shape)
    _check_names(names, expected, what)
    _check_shapes(hf_state_dict, expected, what)
    out = {}
    for rule in tensor_rules(shape, te_names):
        parts = [hf_state_dict[name] for name in rule.hf_names]
        if rule.kind == RENAME:
            out[rule.megatron_name] = parts[0]
        elif rule.kind == QKV:
            out[rule.megatron_name] = pack_qkv(*parts, shape)
        else:
            out[rule.megatron_name] = torch.cat(parts, dim=0)
    return out


def megatron_to_hf(
    mcore_state_dict: Mapping[str, torch.Tensor], shape: ModelShape, te_names: bool = False
) -> dict[str, torch.Tensor]:
    """Full megatron GPTModel state dict -> HF Qwen2ForCausalLM tensors, as the released files hold them
    (tied shapes: no lm_head.weight). `_extra_state` entries (TE/FP8 metadata) are ignored."""
    what = f"megatron state dict for shape {shape.name}"
    names = {n for n in _drop_tied_copy(mcore_state_dict, "output_layer.weight",
                                        "embedding.word_embeddings.weight", shape)
             if not n.endswith("._extra_state")}
    rules = tensor_rules(shape, te_names)
    hf_shapes = hf_tensor_shapes(shape)
    expected = {rule.megatron_name: _megatron_shape(rule, hf_shapes) for rule in rules}
    _check_names(names, expected, what, _spec_hint(names, te_names))
    _check_shapes(mcore_state_dict, expected, what)
    out = {}
    for rule in rules:
        tensor = mcore_state_dict[rule.megatron_name]
        if rule.kind == RENAME:
            pieces = (tensor,)
        elif rule.kind == QKV:
            pieces = unpack_qkv(tensor, shape)
        else:
            pieces = tuple(t.contiguous() for t in tensor.chunk(2, dim=0))
        out.update(zip(rule.hf_names, pieces))
    return out


def load_into_megatron(model: torch.nn.Module, mcore_state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy a full megatron state dict into `model`; only `_extra_state` entries may be absent."""
    result = model.load_state_dict(dict(mcore_state_dict), strict=False)
    missing = [n for n in result.missing_keys if not n.endswith("._extra_state")]
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"loading into {type(model).__name__}: missing {_listing(missing) or 'none'}; "
            f"unexpected {_listing(result.unexpected_keys) or 'none'}"
        )


# ------------------------------------------------------------------------------------------- config.json
def architecture_fields(shape: ModelShape) -> tuple[str, ...]:
    """ModelShape fields that change the tensors or the network: the family's config.json fields except its
    variants (HF_VARIANT_FIELDS: rms_norm_eps, the context length) and rope_theta, which is no tensor's shape: an
    import records config.json's value and a run resolves the base it trains with from it and the stage
    (recipes.validate.rope_base_in_use), so a stage-1 recipe imports released weights."""
    family = family_of(shape)
    return tuple(f for f in family.HF_CONFIG_KEYS if f not in (*family.HF_VARIANT_FIELDS, "rope_theta"))


YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0, "truncate": True}
_YARN_KEYS = {"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings",
              "attention_factor", *YARN_DEFAULTS}


def _rope_dict(config: Mapping) -> Optional[Mapping]:
    """The RoPE scaling entry: transformers 5 `rope_parameters`, else legacy `rope_scaling` (may be None)."""
    return config.get("rope_parameters") or config.get("rope_scaling")


def yarn_from_hf_config(config: Mapping) -> Optional[YarnScaling]:
    """The YaRN settings of a config.json dict, or None for plain RoPE.

    Refuses settings megatron-core 0.16.1 cannot reproduce (mscale 1.0, mscale_all_dim 0, truncated
    correction range are fixed in model.config) and a missing original_max_position_embeddings, which
    transformers versions fill differently (4.45-4.50 ignore it; 5.x infer max_position_embeddings).
    """
    rope = _rope_dict(config)
    rope_type = (rope or {}).get("rope_type") or (rope or {}).get("type") or "default"
    if rope_type == "default":
        return None
    if rope_type != "yarn":
        raise CheckpointMismatchError(f"rope type {rope_type!r} is not supported; only plain RoPE and yarn")
    if "original_max_position_embeddings" not in rope:
        raise CheckpointMismatchError(
            "yarn rope scaling without original_max_position_embeddings (Qwen2.5-Coder: 32768); "
            "transformers versions disagree on its default, so it must be explicit"
        )
    unknown = set(rope) - _YARN_KEYS
    if unknown:
        raise CheckpointMismatchError(f"unknown yarn rope parameter(s) {sorted(unknown)}")
    unsupported = {k: rope[k] for k in ("attention_factor", "mscale", "mscale_all_dim", "truncate")
                   if rope.get(k) is not None and rope[k] != YARN_DEFAULTS.get(k)}
    if unsupported:
        raise CheckpointMismatchError(f"yarn settings megatron-core 0.16.1 does not implement: {unsupported}")
    return YarnScaling(
        factor=float(rope["factor"]),
        original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        beta_fast=float(rope.get("beta_fast") or YARN_DEFAULTS["beta_fast"]),
        beta_slow=float(rope.get("beta_slow") or YARN_DEFAULTS["beta_slow"]),
    )


def _shape_values(config: Mapping, keys: Mapping[str, str]) -> dict:
    """ModelShape field values a config.json dict states under the family's `keys` (defaults as transformers'
    config applies them)."""
    missing = [key for field, key in keys.items()
               if field not in ("head_dim", "rope_theta", "tied_embeddings") and key not in config]
    if missing:
        raise CheckpointMismatchError(f"config.json lacks {missing}")
    values = {field: config[key] for field, key in keys.items() if key in config}
    values.setdefault("head_dim", config[keys["hidden_size"]] // config[keys["num_attention_heads"]])
    values["tied_embeddings"] = bool(config.get(keys["tied_embeddings"], False))  # Qwen2Config's default
    rope = _rope_dict(config) or {}
    values["rope_theta"] = float(rope.get("rope_theta", config.get("rope_theta", 10_000.0)))
    yarn = yarn_from_hf_config(config)
    if yarn is not None:  # the shape keeps the pre-extension context; the YaRN factor says how far it grows
        values["max_position_embeddings"] = yarn.original_max_position_embeddings
    return values


def shape_from_hf_config(config: Mapping, allow_differing: Collection[str] = ()) -> ModelShape:
    """The released shape a config.json dict describes (its family: model.families.family_of_hf_config).

    Architecture fields must match one of the family's released shapes exactly, except the fields named in
    `allow_differing` (e.g. ("num_layers", "vocab_size") for shrunk test checkpoints), which are taken from
    the config like the family's HF_VARIANT_FIELDS. Raises CheckpointMismatchError naming the nearest shape and
    every field that differs from it otherwise, or the features the family refuses (unsupported_hf_config).
    """
    family = family_of_hf_config(config)
    problems = family.unsupported_hf_config(config)
    if problems:
        raise CheckpointMismatchError("unsupported config.json: " + "; ".join(problems))
    keys = family.HF_CONFIG_KEYS
    unknown = set(allow_differing) - set(keys)
    if unknown:
        raise ValueError(f"allow_differing names unknown shape fields {sorted(unknown)}")
    values = _shape_values(config, keys)
    taken_from_config = set(family.HF_VARIANT_FIELDS) | set(allow_differing)

    def differences(shape: ModelShape) -> dict:
        return {field: (getattr(shape, field), value) for field, value in values.items()
                if field not in taken_from_config and getattr(shape, field) != value}

    ranked = sorted(family.RELEASED, key=lambda name: len(differences(family.SHAPES[name])))
    nearest = family.SHAPES[ranked[0]]
    differing = differences(nearest)
    if differing:
        detail = ", ".join(f"{field}: {have!r} in {nearest.name} vs {got!r} in config.json "
                           f"({keys[field]})" for field, (have, got) in differing.items())
        raise CheckpointMismatchError(
            f"config.json matches no supported shape {list(family.RELEASED)}; nearest is {nearest.name}, "
            f"differing in {detail}"
        )
    return nearest.shrink(**{field: values[field] for field in taken_from_config if field in values})


def hf_config_for(shape: ModelShape, yarn: Optional[YarnScaling] = None, **overrides):
    """The transformers config of `shape`'s family (Qwen2Config) with YaRN, as the released config.json files
    state it.

    With YaRN, max_position_embeddings = original x factor (131,072 for Qwen2.5-Coder): the real context,
    no transformers consistency warning, and the factor transformers 4.51-4.53 infer from it is right too.
    `overrides` go straight to Qwen2Config (bos/eos ids, dtype, ...).
    """
    import transformers

    rope = {"rope_type": "default"}
    max_positions = shape.max_position_embeddings
    if yarn is not None:
        rope = {"rope_type": "yarn", "factor": float(yarn.factor),
                "original_max_position_embeddings": yarn.original_max_position_embeddings,
                "beta_fast": float(yarn.beta_fast), "beta_slow": float(yarn.beta_slow)}
        max_positions = int(yarn.original_max_position_embeddings * yarn.factor)
    family = family_of(shape)
    kwargs = dict(family.hf_config_fields(shape), max_position_embeddings=max_positions)
    if int(transformers.__version__.split(".")[0]) >= 5:
        kwargs["rope_parameters"] = {**rope, "rope_theta": shape.rope_theta}
    else:
        kwargs["rope_theta"] = shape.rope_theta
        kwargs["rope_scaling"] = None if yarn is None else {**rope, "type": "yarn"}
    kwargs.update(overrides)
    return getattr(transformers, family.HF_CONFIG_CLASS)(**kwargs)
