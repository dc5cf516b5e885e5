"""Count each pipeline stage's parameters by building the real megatron-core model on the meta device.

Why: the planner's per-rank formula (recipes.planner, configuration that imports no megatron) is only as good
as our reading of megatron's sharding (replicated norms, the tied embedding's copy on the last stage, VPP
chunk placement). Building the model that training would build, for one rank of every pipeline stage, under a fake process group of the recipe's world
size, makes megatron itself the referee. A 32B stage (32 layers, TP8) builds in well under a second: meta
tensors allocate nothing.

How:
- `torch.distributed.init_process_group("fake", store=FakeStore(), rank=r, world_size=W)`: collectives return
  at once without data. megatron's `initialize_model_parallel` works on it with
  `create_gloo_process_groups=False` (the fake backend cannot back the extra gloo groups).
- Rank r = stage x (W / pp) is (tp 0, cp 0, dp 0, pp stage) in megatron's default order tp-cp-ep-dp-pp (checked
  against parallel_state after init). All TP/CP/DP ranks of a stage hold the same number of parameters.
- The model is built with the local spec, no FP8, `use_cpu_initialization=True` (so megatron does not place
  parameters on `torch.cuda.current_device()` and defeat the meta device) and `perform_initialization=False`.
  Transformer Engine's spec moves the norm weights into the fused linears but keeps the counts; FP8 adds no
  parameters (its weight casts are buffers).
- Tied embeddings with PP: megatron zero-fills the last stage's copy and all-reduces it (`weight.data.cuda()`);
  on meta tensors `.cuda()` is made a no-op and the fake all-reduce does nothing.
"""
from __future__ import annotations

import dataclasses

import torch
from megatron.core import parallel_state
from torch.overrides import TorchFunctionMode
from torch.testing._internal.distributed.fake_pg import FakeStore

from model.build import build_gpt_model
from recipes.schema import Recipe
from train import cpu_shims
from train.megatron_args import build_transformer_config


class _MetaStaysMeta(TorchFunctionMode):
    """`meta_tensor.cuda()` would fail ("cannot copy out of meta tensor"); keep it on meta."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda and args and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def _counting_recipe(recipe: Recipe) -> Recipe:
    """The recipe with the local spec and no FP8: same parameter count, buildable on any machine."""
    return dataclasses.replace(
        recipe,
        model=dataclasses.replace(recipe.model, transformer_impl="local"),
        precision=dataclasses.replace(recipe.precision, fp8=None, fp8_param=False),
    )


def meta_parameters_per_stage(recipe: Recipe, world_size: int) -> list[int]:
    """Parameters one rank of each pipeline stage holds (all its VPP chunks), counted by megatron-core."""
    if torch.distributed.is_initialized():
        raise RuntimeError("the meta-device parameter count needs its own fake process group, but "
                           "torch.distributed is already initialised; run the planner in a separate process "
                           "or pass plan.meta_build=false")
    cpu_shims.install_if_no_cuda()  # megatron asks torch.cuda.current_device() for RoPE buffers
    p = recipe.parallel
    counting = _counting_recipe(recipe)
    shape = counting.model_shape()
    counts = []
    for stage in range(p.pp):
        rank = stage * (world_size // p.pp)
        torch.distributed.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
        try:
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=p.tp,
                pipeline_model_parallel_size=p.pp,
                virtual_pipeline_model_parallel_size=p.vpp if p.vpp > 1 else None,
                context_parallel_size=p.cp,
                create_gloo_process_groups=False,
            )
            got = parallel_state.get_pipeline_model_parallel_rank()
            if got != stage:
                raise RuntimeError(f"fake rank {rank} landed on pipeline stage {got}, expected {stage}; "
                                   "megatron's rank order changed")
            config = build_transformer_config(counting, use_cpu_initialization=True, perform_initialization=False)
            total = 0
            with torch.device("meta"), _MetaStaysMeta():
                for vp in range(p.vpp):
                    chunk = build_gpt_model(shape, config, transformer_impl="local",
                                            max_sequence_length=recipe.train.seq_length, yarn=counting.yarn_scaling(),
                                            vp_stage=vp if p.vpp > 1 else None)
                    total += sum(t.numel() for t in chunk.parameters())
            counts.append(total)
        finally:
            parallel_state.destroy_model_parallel()
            torch.distributed.destroy_process_group()
    return counts
