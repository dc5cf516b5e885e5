"""What a recipe costs per GPU before it launches: parameters per rank, peak memory, FLOPs, and whether it fits.

Parameters per rank are exact (train.meta_count checks them against megatron's own meta-device build). Peak
memory per rank of each pipeline stage = weights + fp32 grads + Adam state (sharded over DP x CP with the
distributed optimizer) + FP8 weight cache + activations of the schedule's in-flight micro-batches
(Korthikanti et al. 2022 per-layer bytes for the Qwen2 block) + logits on the last stage + a 3 GiB + 10 %
allowance. The derivation, with each term's numbers: docs/memory-model.md.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from model.accounting import parameter_breakdown, parameter_count, training_flops_per_token
from model.shapes import ModelShape
from recipes.gpus import get_gpu
from recipes.schema import Recipe
from recipes.stages import stage_spec
from recipes.validate import describe_rope, validate
from recipes.world import Layout, layout_of, recipe_world_size

GIB = 1024**3
FIXED_ALLOWANCE_GIB = 3.0
FRAGMENTATION = 0.10
LOGIT_BYTES = 2 + 4 + 2


def _layer_parameters(shape: ModelShape, tp: int) -> tuple[int, int]:
    """(parameters of one layer on one TP rank, of which linear weights) from model.accounting's breakdown."""
    parts = parameter_breakdown(shape)
    sharded = (parts["attention"] + parts["mlp"]) // shape.num_layers  # QKV (+bias), proj, fc1, fc2
    return sharded // tp + 2 * shape.hidden_size, (sharded - shape.qkv_rows) // tp  # less the QKV bias


def stage_parameters(shape: ModelShape, layout: Layout) -> list[int]:
    """Parameters held by one rank of each pipeline stage (module docstring)."""
    layer, _ = _layer_parameters(shape, layout.tp)
    vocab_shard = shape.vocab_size * shape.hidden_size // layout.tp
    counts = []
    for stage in range(layout.pp):
        n = shape.num_layers // layout.pp * layer
        if stage == 0:
            n += vocab_shard
        if stage == layout.pp - 1:
            n += shape.hidden_size  # final norm
            if not shape.tied_embeddings or layout.pp > 1:
                n += vocab_shard  # output layer, or the tied embedding's copy on the last stage
        counts.append(n)
    return counts


def layer_activation_bytes(shape: ModelShape, layout: Layout, tokens: int, element_bytes: int) -> int:
    """Bytes one layer keeps for backward for `tokens` tokens on this rank (module docstring formula)."""
    tp, d = layout.tp, shape.head_dim
    norm_side = 4 * shape.hidden_size // (tp if layout.sp else 1)
    q = shape.num_attention_heads * d // tp
    kv = 2 * d * max(shape.num_query_groups // tp, 1)
    elements = norm_side + 2 * q + kv + 3 * shape.ffn_hidden_size // tp
    return tokens * (element_bytes * elements + 4 * shape.num_attention_heads // tp)


def inflight(layout: Layout, stage: int) -> tuple[int, int]:
    """(units of activations held at the peak on pipeline `stage`, model chunks per unit)."""
    if layout.pp == 1:
        return 1, layout.vpp  # gradient accumulation: one micro-batch through the whole model at a time
    if layout.vpp == 1:
        return min(layout.pp - stage, layout.num_microbatches), 1
    warmup = 2 * (layout.pp - stage - 1) + (layout.vpp - 1) * layout.pp
    return min(warmup + 1, layout.num_microbatches * layout.vpp), 1


@dataclass
class StageMemory:
    """Peak bytes of one rank of a pipeline stage, by part (module docstring)."""

    stage: int
    params: int
    weights: int = 0
    grads: int = 0
    optimizer: int = 0
    fp8_weight_cache: int = 0
    activations: int = 0
    logits: int = 0
    allowance: int = 0

    @property
    def total(self) -> int:
        return (self.weights + self.grads + self.optimizer + self.fp8_weight_cache
                + self.activations + self.logits + self.allowance)

    def gib(self) -> dict[str, float]:
        parts = {k: v for k, v in asdict(self).items() if k not in ("stage", "params")}
        return {**{k: round(v / GIB, 2) for k, v in parts.items()}, "total": round(self.total / GIB, 2)}


def stage_memory(recipe: Recipe, shape: ModelShape, layout: Layout) -> list[StageMemory]:
    """Peak memory per pipeline stage (module docstring)."""
    fp32 = recipe.precision.dtype == "fp32"
    w_bytes = 4 if fp32 else 2
    g_bytes = 4 if (fp32 or recipe.precision.grad_reduce_in_fp32) else 2
    o_bytes = 8 if fp32 else 12
    shard = layout.dp * layout.cp if recipe.parallel.distributed_optimizer else 1
    rows = stage_spec(recipe.stage).rows_per_sample  # sequences per micro-batch item (DPO: a pair)
    tokens = layout.micro_batch_size * layout.seq_length // layout.cp * rows
    layer_bytes = layer_activation_bytes(shape, layout, tokens, w_bytes)
    layers_per_chunk = shape.num_layers // (layout.pp * layout.vpp)
    _, linear_per_layer = _layer_parameters(shape, layout.tp)
    hidden_shard = shape.hidden_size // (layout.tp if layout.sp else 1)
    out = []
    for stage, params in enumerate(stage_parameters(shape, layout)):
        m = StageMemory(stage, params, weights=params * w_bytes, grads=params * g_bytes,
                        optimizer=params * o_bytes // shard)
        if recipe.precision.fp8 is not None:
            m.fp8_weight_cache = 2 * linear_per_layer * layers_per_chunk * layout.vpp
        units, chunks_per_unit = inflight(layout, stage)
        layers_held = units * chunks_per_unit * layers_per_chunk
        if recipe.train.recompute == "full":
            group = recipe.train.recompute_num_layers
            m.activations = layers_held // group * tokens * hidden_shard * w_bytes + (group + 1) * layer_bytes
        else:
            m.activations = (layers_held + 1) * layer_bytes
        if layout.cp > 1:  # ring attention: a send and a receive buffer of this rank's K and V
            k_and_v = 2 * shape.head_dim * max(shape.num_query_groups // layout.tp, 1)
            m.activations += 2 * k_and_v * tokens * w_bytes
        if stage == layout.pp - 1:
            m.logits = tokens * (shape.vocab_size // layout.tp) * (LOGIT_BYTES if not fp32 else 12)
            m.logits += 2 * tokens * hidden_shard * w_bytes  # final norm input and output
        dynamic = m.total
        m.allowance = int(FIXED_ALLOWANCE_GIB * GIB + FRAGMENTATION * dynamic)
        out.append(m)
    return out


@dataclass
class Plan:
    """Everything launch/plan.py prints; `to_json()` is the machine-readable form."""

    recipe_name: str
    shape: str
    stage_name: str
    layout: Layout
    gpu: str
    gpu_memory_gib: float
    params_total: int
    params_per_rank: list[int]
    stages: list[StageMemory]
    flops_per_token: float
    precision: str
    recompute: str
    distributed_optimizer: bool
    rope: str = ""
    meta_params_per_rank: Optional[list[int]] = None
    notes: list[str] = field(default_factory=list)

    @property
    def busiest(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def memory_gib_per_gpu(self) -> float:
        return round(self.busiest.total / GIB, 2)

    @property
    def fits(self) -> bool:
        return self.memory_gib_per_gpu <= self.gpu_memory_gib

    def to_json(self) -> dict:
        lay = self.layout
        tokens = lay.global_batch_size * lay.seq_length
        return {
            "recipe": self.recipe_name, "shape": self.shape, "stage": self.stage_name,
            "params_total": self.params_total, "params_per_rank_max": max(self.params_per_rank),
            "params_per_rank": self.params_per_rank, "meta_params_per_rank": self.meta_params_per_rank,
            "memory_gib_per_gpu": self.memory_gib_per_gpu, "busiest_stage": self.busiest.stage,
            "memory_breakdown_gib": self.busiest.gib(), "memory_gib_per_stage": [s.gib()["total"] for s in self.stages],
            "gpu": self.gpu, "gpu_memory_gib": self.gpu_memory_gib, "fits": self.fits,
            "headroom_gib": round(self.gpu_memory_gib - self.memory_gib_per_gpu, 2),
            "world_size": lay.world_size, "tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp, "cp": lay.cp, "dp": lay.dp,
            "sp": lay.sp, "seq_length": lay.seq_length, "micro_batch_size": lay.micro_batch_size,
            "global_batch_size": lay.global_batch_size, "num_microbatches": lay.num_microbatches,
            "tokens_per_step": tokens, "flops_per_token": self.flops_per_token,
            "flops_per_step": self.flops_per_token * tokens, "precision": self.precision,
            "recompute": self.recompute, "distributed_optimizer": self.distributed_optimizer, "rope": self.rope,
        }

    def to_text(self) -> str:
        lay, b = self.layout, self.busiest
        tokens = lay.global_batch_size * lay.seq_length
        meta = ""
        if self.meta_params_per_rank is not None:
            same = self.meta_params_per_rank == self.params_per_rank
            meta = f"  (megatron meta build: {_fmt_per_stage(self.meta_params_per_rank)}" \
                   f"{', equal' if same else ', DIFFERENT'})"
        lines = [
            f"plan {self.recipe_name}: {self.shape} / {self.stage_name} on {lay.world_size} x {self.gpu}",
            f"  layout      tp={lay.tp} sp={'on' if lay.sp else 'off'} pp={lay.pp} vpp={lay.vpp} cp={lay.cp} "
            f"dp={lay.dp}; distributed optimizer {'on' if self.distributed_optimizer else 'off'}",
            f"  batch       seq {lay.seq_length}, micro {lay.micro_batch_size}, global {lay.global_batch_size}"
            f" = {lay.num_microbatches} micro-batches/step/rank, {tokens / 1e6:.2f}M tokens/step",
            f"  precision   {self.precision}, recompute {self.recompute}",
            f"  positions   {self.rope}",
            f"  params      total {self.params_total:,}; per rank by pp stage "
            f"{_fmt_per_stage(self.params_per_rank)}{meta}",
            f"  FLOPs       {self.flops_per_token / 1e9:.2f} GFLOP/token (fwd+bwd, megatron convention), "
            f"{self.flops_per_token * tokens / 1e15:.1f} PFLOP/step",
            f"  memory      busiest rank: pp stage {b.stage} (GiB)",
        ]
        for name, value in b.gib().items():
            if value or name == "total":
                lines.append(f"    {name:<17}{value:8.2f}")
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"  verdict     {self.memory_gib_per_gpu:.1f} of {self.gpu_memory_gib:.1f} GiB -> {verdict} "
                     f"({self.gpu_memory_gib - self.memory_gib_per_gpu:+.1f} GiB headroom)")
        lines += [f"  note        {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt_per_stage(counts: list[int]) -> str:
    return "[" + ", ".join(f"{c / 1e9:.3f}B" for c in counts) + "]"


def make_plan(recipe: Recipe, world_size: Optional[int] = None, recorded_rope_base: Optional[float] = None) -> Plan:
    """Validate `recipe` on `world_size` (default: its run.nodes x run.gpus_per_node) and plan it.

    `recorded_rope_base`: the base of the checkpoint the run would load (launch/plan.py reads it), None when
    unknown: the plan then names the stage's fresh-init base.
    `meta_params_per_rank` stays None here: the meta-device count builds megatron models (train.meta_count),
    which configuration does not import; launch/plan.py fills it in.
    """
    world = world_size or recipe_world_size(recipe)
    validate(recipe, world)
    shape = recipe.model_shape()
    layout = layout_of(recipe, world)
    gpu = get_gpu(recipe.run.gpu)
    prec = recipe.precision
    precision = prec.dtype if prec.fp8 is None else f"{prec.dtype} + fp8 {prec.fp8}/{prec.fp8_recipe}"
    plan = Plan(
        recipe_name=recipe.run.name, shape=shape.name, stage_name=recipe.stage.name, layout=layout, gpu=gpu.name,
        gpu_memory_gib=recipe.run.gpu_memory_gib or gpu.memory_gib, params_total=parameter_count(shape),
        params_per_rank=stage_parameters(shape, layout), stages=stage_memory(recipe, shape, layout),
        flops_per_token=training_flops_per_token(shape, layout.seq_length), precision=precision,
        recompute=recipe.train.recompute, distributed_optimizer=recipe.parallel.distributed_optimizer,
        rope=describe_rope(recipe, recorded_rope_base),
    )
    if recipe.parallel.distributed_optimizer and layout.dp * layout.cp == 1:
        plan.notes.append("distributed optimizer on a single data-parallel rank shards nothing")
    if stage_spec(recipe.stage).plan_note:
        plan.notes.append(stage_spec(recipe.stage).plan_note)
    return plan


def render(plan: Plan, fmt: str) -> str:
    return json.dumps(plan.to_json(), indent=None) if fmt == "json" else plan.to_text()
