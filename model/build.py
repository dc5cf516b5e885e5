"""Build megatron-core's GPTModel for a Qwen2.5-Coder shape, with the layer spec the machine supports.

Layer spec choice (`transformer_impl`):
- "transformer_engine": megatron's TE spec (fused norm+linear, TE attention with ring CP, FP8). Needs TE and a
  GPU. TE's import is guarded with `except Exception`: a half-installed TE raises RuntimeError or
  FileNotFoundError (missing cuDNN), not only ImportError, through megatron's own imports.
- "local": megatron's local spec with model.layers.RMSNorm (sequence-parallel capable) and
  model.layers.SDPACoreAttention (fused SDPA, context-parallel capable).
- "auto": TE when it imports and CUDA is present, else local.
Both specs use the same parameter names except the norms: TE fuses input_layernorm into
self_attention.linear_qkv.layer_norm_weight and pre_mlp_layernorm into mlp.linear_fc1.layer_norm_weight
(hf_interop.names handles both).
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig

from model.layers import RMSNorm, SDPACoreAttention
from model.shapes import TRANSFORMER_IMPLS, ModelShape, YarnScaling


def transformer_engine_error() -> Optional[str]:
    """None when Transformer Engine is usable here, else why not (kept for messages and test skips)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as error:  # a broken TE install raises RuntimeError/OSError, not only ImportError
        return f"transformer_engine does not import: {type(error).__name__}: {error}"
    return None


@functools.lru_cache(maxsize=None)
def _say_local_spec(reason: str) -> None:
    """Once per process (rank 0's line reaches the console); replaces megatron's TE/apex fallback warnings."""
    logging.getLogger("model").info("local spec (%s): megatron's local layers with model.layers RMSNorm and SDPA "
                                    "attention; no fused TE kernels, no FP8", reason)


def resolve_transformer_impl(requested: str) -> str:
    """Map "auto" to what this machine supports; refuse TE where it cannot run, naming the reason."""
    if requested not in TRANSFORMER_IMPLS:
        raise ValueError(f"model.transformer_impl={requested!r}; choose one of {TRANSFORMER_IMPLS}")
    te_error = transformer_engine_error()
    if requested == "auto":
        requested = "local" if te_error else "transformer_engine"
        if te_error:
            _say_local_spec(f"Transformer Engine unavailable: {te_error}")
    if requested == "transformer_engine" and te_error:
        raise RuntimeError(
            f"model.transformer_impl=transformer_engine but {te_error}; install transformer-engine on a GPU "
            "node (requirements-gpu.txt) or set model.transformer_impl=local"
        )
    return requested


def decoder_block_spec(config: TransformerConfig, transformer_impl: str, vp_stage: Optional[int] = None):
    """The decoder block spec for this rank's pipeline stage (and virtual stage)."""
    if transformer_impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

        return get_gpt_decoder_block_spec(
            config, use_transformer_engine=True, normalization="RMSNorm", vp_stage=vp_stage
        )
    layer = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer.submodules.input_layernorm = RMSNorm
    layer.submodules.pre_mlp_layernorm = RMSNorm
    layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=RMSNorm)


def build_gpt_model(
    shape: ModelShape,
    config: TransformerConfig,
    *,
    transformer_impl: str = "local",
    max_sequence_length: int = 4096,
    yarn: Optional[YarnScaling] = None,
    vp_stage: Optional[int] = None,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
) -> GPTModel:
    """One model chunk: the pipeline stage (and virtual stage `vp_stage`) this rank owns.

    `config` must come from model.config.transformer_config(shape, ...), so the YaRN attributes and the
    architecture match `shape`. pre/post_process default to whether this chunk holds the embedding/head.
    """
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    return GPTModel(
        config=config,
        transformer_layer_spec=decoder_block_spec(config, transformer_impl, vp_stage),
        vocab_size=shape.vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=shape.tied_embeddings,
        position_embedding_type="yarn" if yarn is not None else "rope",
        rotary_base=int(shape.rope_theta),
        vp_stage=vp_stage,
    )
