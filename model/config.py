"""Shape -> megatron-core TransformerConfig: the shape's family in megatron's vocabulary.

The architecture half (for Qwen2: SwiGLU, RMSNorm with the shape's eps, bias on Q/K/V only, GQA, head_dim, no
dropout) is the family's (model.families, `transformer_fields`); everything about parallelism, precision and
recompute arrives as `runtime` keyword arguments built in one place (train.megatron_args.
transformer_runtime_kwargs) — this module never decides them.

Fusions: TE and apex provide fused kernels; without them megatron falls back to torch for everything except
`gradient_accumulation_fusion` and `persist_layer_norm`. `gradient_accumulation_fusion` needs apex's
`fused_weight_gradient_mlp_cuda` extension (in NGC PyTorch containers; not on PyPI): megatron's own
ColumnParallelLinear, the output layer even in the TE spec, raises at construction without it
(megatron-core 0.16.1 tensor_parallel/layers.py), so it is on only when that extension imports.
RoPE base is a GPTModel argument in megatron-core 0.16.1 (default 10000!), so model.build passes it.
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from model.families import family_of
from model.shapes import ModelShape, YarnScaling


def grad_accumulation_fusion_available() -> bool:
    """Whether apex's fused wgrad-accumulation extension imports (megatron checks the same module)."""
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def _apply_yarn(config: TransformerConfig, yarn: YarnScaling) -> None:
    """megatron reads these with getattr and no default (gpt_model.py:172-188); set them only for YaRN,
    because any yarn_* attribute makes attention apply YaRN's mscale even with plain RoPE."""
    config.yarn_rotary_scaling_factor = yarn.factor
    config.yarn_original_max_position_embeddings = yarn.original_max_position_embeddings
    config.yarn_beta_fast = yarn.beta_fast
    config.yarn_beta_slow = yarn.beta_slow
    config.yarn_mscale = 1.0
    config.yarn_mscale_all_dim = 0.0
    config.yarn_correction_range_round_to_int = True


def kernel_fusions(use_te: bool, yarn: Optional[YarnScaling]) -> dict:
    """Fused kernels: torch fallbacks work everywhere; TE-only fusions only with TE.

    RoPE fusion stays off under YaRN: megatron-core 0.16.1's fused packed-sequence (THD) branch
    (models/common/embeddings/rope_utils.py) calls TE's fused kernel without YaRN's mscale (1.139 at factor 4),
    so packed batches would silently lose the attention scaling; only its unpacked branch falls back to the
    unfused rotation when mscale != 1. Off, both paths use the unfused rotation that applies it.
    """
    return dict(
        bias_activation_fusion=use_te,
        bias_dropout_fusion=use_te,
        apply_rope_fusion=use_te and yarn is None,
        masked_softmax_fusion=False,  # SDPA or TE attention do their own masking
        gradient_accumulation_fusion=use_te and grad_accumulation_fusion_available(),
        persist_layer_norm=False,
        cross_entropy_loss_fusion=use_te,
    )


def transformer_config(
    shape: ModelShape,
    *,
    use_te: bool,
    yarn: Optional[YarnScaling] = None,
    **runtime,
) -> TransformerConfig:
    """Build the TransformerConfig for `shape`; `runtime` carries parallel/precision/recompute fields."""
    params_dtype = runtime.pop("params_dtype", torch.float32)
    kwargs = family_of(shape).transformer_fields(shape)
    kwargs.update(
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        **kernel_fusions(use_te, yarn),
        use_cpu_initialization=not torch.cuda.is_available(),
        cuda_graph_scope=[],  # megatron's default "full" only warns that it is deprecated in favour of [] (same)
    )
    kwargs.update(runtime)
    config = TransformerConfig(**kwargs)
    if yarn is not None:
        _apply_yarn(config, yarn)
    return config
