"""The one place a recipe's parallel, precision and recompute settings become megatron-core arguments.

Model code (model/) only knows architectures; the loop, the planner and the converters all get their
TransformerConfig, DDP config and optimizer config from here, so a layout means the same thing everywhere.
The model's shape and YaRN scaling come from the recipe itself (Recipe.model_shape, Recipe.yarn_scaling).
"""
from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.transformer.transformer_config import TransformerConfig

from model.build import resolve_transformer_impl
from model.config import transformer_config
from recipes.schema import Recipe


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
"""Short dtype names -> torch: a recipe's precision.dtype (bf16, fp32; recipes.validate) and the converter's
--dtype (any of them)."""


def params_dtype(recipe: Recipe) -> torch.dtype:
    return DTYPES[recipe.precision.dtype]


def transformer_runtime_kwargs(recipe: Recipe) -> dict:
    """TransformerConfig fields for parallelism, precision and recompute (model.config adds architecture)."""
    parallel, precision, train = recipe.parallel, recipe.precision, recipe.train
    kwargs = dict(
        tensor_model_parallel_size=parallel.tp,
        sequence_parallel=parallel.sp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp if parallel.vpp > 1 else None,
        context_parallel_size=parallel.cp,
        batch_p2p_comm=parallel.batch_p2p_comm,
        params_dtype=params_dtype(recipe),
    )
    if parallel.cp > 1:
        # Ring exchange of K/V chunks. Named, not left to the default: TE's "a2a" needs the KV heads per TP
        # rank divisible by CP, and Qwen2.5-Coder has 2 (0.5B-3B), 4 (7B) or 8 (14B, 32B) KV heads.
        kwargs.update(cp_comm_type="p2p")
    if train.recompute == "selective":
        kwargs.update(recompute_granularity="selective", recompute_modules=["core_attn"])
    elif train.recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform",
                      recompute_num_layers=train.recompute_num_layers)
    if precision.fp8 is not None:
        kwargs.update(
            fp8=precision.fp8,
            fp8_recipe=precision.fp8_recipe,
            fp8_param=precision.fp8_param,
            fp8_amax_history_len=precision.fp8_amax_history_len,
            fp8_amax_compute_algo=precision.fp8_amax_compute_algo,
            # FP8 on the GEMMs only unless asked: FP8 attention with CP exists only in TE's sm90+ fused
            # attention, and its softmax in e4m3 is a numerics change of its own.
            fp8_dot_product_attention=precision.fp8_attention,
        )
    return kwargs


def build_transformer_config(recipe: Recipe, **extra) -> TransformerConfig:
    """TransformerConfig of the recipe's model under its layout; `extra` for tests (e.g. init flags)."""
    impl = resolve_transformer_impl(recipe.model.transformer_impl)
    kwargs = transformer_runtime_kwargs(recipe)
    kwargs.update(extra)
    return transformer_config(recipe.model_shape(), use_te=impl == "transformer_engine",
                              yarn=recipe.yarn_scaling(), **kwargs)


def ddp_config(recipe: Recipe) -> DistributedDataParallelConfig:
    parallel = recipe.parallel
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=recipe.precision.grad_reduce_in_fp32,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=parallel.distributed_optimizer,
        # Per-token loss (the trainer's calculate_per_token_loss): gradients are summed over DP x CP and
        # divided once by the global token count; averaging in the collective would divide by DP x CP too.
        average_in_collective=False,
        check_for_nan_in_grad=False,  # the loop checks loss and grad norm itself, with a clearer message
    )


def optimizer_config(recipe: Recipe) -> MegatronOptimizerConfig:
    opt = recipe.optimizer
    dtype = params_dtype(recipe)
    return MegatronOptimizerConfig(
        optimizer="adam",
        lr=opt.lr,
        min_lr=opt.min_lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2,
        adam_eps=opt.adam_eps,
        clip_grad=opt.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=recipe.parallel.distributed_optimizer,
    )
