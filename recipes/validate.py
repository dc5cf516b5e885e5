"""Every layout rule of a recipe, in one place, each failure naming the rule, the values and a fix.

Why one validator: megatron-core checks some of these deep inside model construction (after minutes of
imports and data indexing on hundreds of GPUs), others not at all (FP8 names, PP=2 with VPP>1 and batched
p2p: wrong gradients, no error). Here they all run at compose time (`recipes.compose.to_recipe`) and again in
the training loop with the real world size (`validate(recipe, world_size)`).

Rules (name: condition; megatron-core 0.16.1 source of the constraint):
- unknown-key: a key added with `+group.key=...` that the schema does not define. Hydra opens the struct flag
  for appends and OmegaConf.to_object keeps such keys as plain attributes, so `+parallel.tpp=2` would otherwise
  be dropped silently (a plain `parallel.tpp=2` already fails at compose time).
- enum: string fields take one of their listed values (the dataclass schema only types them as str).
- positive: sizes, batches and sequence length are >= 1.
- tp-heads: num_attention_heads % tp == 0 (transformer_config.py:924).
- tp-kv-groups: num_query_groups % tp == 0 or tp % num_query_groups == 0 (transformer_config.py:940). TP beyond
  the KV heads is legal: each rank all-gathers QKV and keeps its group (attention.py:1398).
- tp-qkv-rows: (heads + 2 x groups) x head_dim % tp == 0: ColumnParallelLinear splits the fused QKV rows
  evenly (layers.py `divide`). Not implied by the two rules above: 7B at tp=28 passes both, fails this.
- tp-ffn: ffn_hidden_size % tp == 0 (each rank's SwiGLU chunk of fc1 holds whole gate/up halves).
- tp-vocab: vocab rows % tp == 0 (VocabParallelEmbedding and the output layer split rows evenly,
  tensor_parallel/utils.py:118).
- sp-needs-tp: sequence_parallel needs tp > 1 (model_parallel_config.py:409).
- pp-layers: num_layers % (pp x vpp) == 0 (even split; offset = vp*L/VPP + pp_rank*L/(PP*VPP)).
- vpp-needs-pp: vpp > 1 needs pp > 1 (interleaving has nothing to interleave otherwise).
- pp2-vpp-p2p: pp == 2 and vpp > 1 needs batch_p2p_comm False: with batched send/recv the previous and
  next rank are the same process and messages match in the wrong order -> silently wrong gradients
  (docs/megatron-quirks.md; grad-norm 1.98 vs 0.417 measured).
- cp-sequence: seq % (2 x cp) == 0 (load-balanced split into 2 x cp chunks).
- sp-sequence: with SP the per-CP-rank length seq/cp is split over TP: (seq/cp) % tp == 0.
- packing-cp: a packing stage (sft) with data.packing needs cp == 1: packed (thd) rows under CP need every
  conversation split into 2 x cp chunks, which neither this project's local attention nor its batch slicing does.
- fp8-sequence: FP8 GEMMs need the per-CP-rank token count % 16 (32 for mxfp8), and with SP the per-TP-rank
  count too.
- fp8-impl / fp8-dtype / fp8-gpu / fp8-param: FP8 runs only in Transformer Engine (named explicitly, so `auto`
  cannot silently fall back to the local spec without FP8), on bf16 models, with a recipe the GPU supports
  (recipes.gpus: delayed/tensorwise need sm89+, blockwise sm90+, mxfp8 sm100+); fp8_param needs fp8.
- fp8-cp-sequence: FP8 with cp > 1: seq % lcm(16, 2 x tp x cp) == 0 (32 for mxfp8), the multiple Megatron-Bridge
  pads FP8 context-parallel sequences to: every rank's 2 load-balanced chunks stay whole FP8 tiles. Implied by
  fp8-sequence up to TP8; it binds for wider TP (3B at TP16 CP2: 64 where fp8-sequence asks 32).
- fp8-te-version: the FP8 recipe exists in the installed Transformer Engine (recipes.gpus.FP8_RECIPE_MIN_TE:
  tensorwise 2.2, blockwise 2.3, mxfp8 2.1); skipped where TE is not installed (a CPU machine planning a run).
- distributed-optimizer: parallel.overlap_param_gather and precision.fp8_param need
  parallel.distributed_optimizer: both gather parameters from the optimizer's shards; without it megatron
  silently ignores overlap_param_gather (distributed_data_parallel.py:347), and Megatron-LM refuses FP8
  parameter gathering.
- eval-tasks: train.eval_tasks (evaluation during training) needs a cadence (train.eval_tasks_interval, else a
  train.eval_interval >= 1), train.eval_tasks_limit >= 0, and a layout the live model can decode in: cp == 1
  (the local attention all-gathers K/V over CP ranks that hold no share of a prompt), vpp == 1 (one model chunk
  per stage, as launch/evaluate.py builds) and no FP8 (FP8 GEMMs need token counts divisible by 16; a decode
  step feeds one token per row). The task names are checked by launch/pretrain.py against evaluation.tasks,
  which recipes/ does not import.
- stage-plugin: stage.plugin names a module that imports (it registers an out-of-tree stage: recipes.stages).
- enum (stage.name): a registered stage (recipes.stages); then the stage's own rules, e.g. dpo:
  stage.dpo_beta > 0, 0 <= stage.dpo_label_smoothing < 0.5 (at 0.5 both labels weigh the same and nothing is
  learnt), stage.dpo_nll_weight >= 0.
- rope-base (when the run starts, `rope_base_in_use`, against the checkpoint it loads or resumes): an explicit
  model.rope_base must equal the base the checkpoint records, except at a stage that switches the base (repo,
  long). Continuing trained weights at another base moves every RoPE frequency; megatron would not notice.
- recompute-layers: full (uniform) recompute checkpoints groups of recompute_num_layers layers; the group must
  divide the layers of each model chunk (transformer_block.py:532 would index past the chunk).
- positions: seq_length <= max_position_embeddings x yarn_factor (32,768 trained positions; 131,072 with
  YaRN x4). Beyond that RoPE extrapolates untrained positions.
- schedule: min_lr <= lr (optimizer_param_scheduler.py:148). A warmup longer than a short smoke run is fine:
  train.trainer clamps it to train_iters - 1.
- gpu: run.gpu names a row of recipes.gpus (memory and FP8 support come from it).
- data-sources / data-fim / data-split / data-loader (and enum for data.mode, data.loader): the data node's own
  rules, stated in data.config.DataConfig.problems (sources non-empty, unique, weight > 0; FIM rates in [0, 1];
  the train,valid,test split; loader workers).
World-size rules (only when the world size is known):
- world-size: world % (tp x pp x cp) == 0; dp = world / (tp x pp x cp).
- global-batch: global_batch_size % (micro_batch_size x dp) == 0.
- vpp-microbatches: with vpp > 1 the micro-batch count per step is a multiple of pp (schedules.py:996-1015).
Tied embeddings with PP are NOT a rule: megatron keeps a zero-initialised copy of the embedding on the last
stage, all-reduces it from the first stage at construction (language_module.py:245) and all-reduces the two
gradients in finalize_model_grads every step (finalize_model_grads.py:164); the planner counts the copy.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import math
from dataclasses import dataclass
from typing import Optional

from model.shapes import TRANSFORMER_IMPLS, ModelShape
from recipes.gpus import FP8_RECIPE_MIN_CAPABILITY, FP8_RECIPE_MIN_TE, GPUS
from recipes.schema import Recipe
from recipes.stages import PluginImportError, StageSpec, UnknownStage, stage_spec
from recipes.world import layout_of

ENUMS: dict[str, tuple[str, ...]] = {
    "model.transformer_impl": TRANSFORMER_IMPLS,
    "precision.dtype": ("bf16", "fp32"),
    "precision.fp8": ("e4m3", "hybrid"),
    "precision.fp8_recipe": tuple(FP8_RECIPE_MIN_CAPABILITY),
    "precision.fp8_amax_compute_algo": ("max", "most_recent"),
    "train.recompute": ("none", "selective", "full"),
    "optimizer.decay_style": ("cosine", "linear", "constant"),
    "plan.format": ("text", "json"),
}
POSITIVE = ("parallel.tp", "parallel.pp", "parallel.vpp", "parallel.cp", "train.seq_length",
            "train.micro_batch_size", "train.global_batch_size", "train.train_iters", "train.recompute_num_layers",
            "run.nodes", "run.gpus_per_node", "stage.rope_base", "model.rope_base", "train.eval_tasks_interval",
            "train.eval_tasks_max_new_tokens")  # None (auto) passes


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


class RecipeError(ValueError):
    """A recipe breaks one or more layout rules; `violations` lists them all (not only the first)."""

    def __init__(self, violations: list[Violation]):
        self.violations = violations
        lines = "\n".join(f"  {v}" for v in violations)
        super().__init__(f"recipe breaks {len(violations)} rule(s):\n{lines}")

    @property
    def rules(self) -> list[str]:
        return [v.rule for v in self.violations]


def _get(recipe: Recipe, dotted: str):
    node = recipe
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def tp_width_problems(shape: ModelShape, tp: int) -> list[tuple[str, str]]:
    """(rule, what fails) for every tensor-parallel width rule that `tp` breaks on `shape`."""
    heads, groups, d = shape.num_attention_heads, shape.num_query_groups, shape.head_dim
    problems = []
    if heads % tp:
        problems.append(("tp-heads", f"does not divide num_attention_heads={heads}"))
    if groups % tp and tp % groups:
        problems.append(("tp-kv-groups", f"neither divides nor is a multiple of num_query_groups={groups}"))
    qkv_rows = shape.qkv_rows
    if qkv_rows % tp:
        problems.append(("tp-qkv-rows", f"does not divide the fused QKV rows (heads + 2 x groups) x head_dim = "
                                        f"({heads} + 2 x {groups}) x {d} = {qkv_rows}"))
    if shape.ffn_hidden_size % tp:
        problems.append(("tp-ffn", f"does not divide ffn_hidden_size={shape.ffn_hidden_size}"))
    if shape.vocab_size % tp:
        problems.append(("tp-vocab", f"does not divide the vocab rows={shape.vocab_size}"))
    return problems


def valid_tp_sizes(shape: ModelShape) -> list[int]:
    """Every TP size that passes all width rules for `shape` (tp must divide the heads, so tp <= heads)."""
    return [tp for tp in range(1, shape.num_attention_heads + 1) if not tp_width_problems(shape, tp)]


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _fmt(values) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


def _unknown_keys(node, path: str = "") -> list[Violation]:
    """Attributes of the recipe's dataclass nodes that are not dataclass fields (see the unknown-key rule)."""
    if isinstance(node, (list, tuple)):
        return [v for i, item in enumerate(node) for v in _unknown_keys(item, f"{path}[{i}]")]
    if not dataclasses.is_dataclass(node):
        return []
    fields = {f.name for f in dataclasses.fields(node)}
    out = []
    for key, value in vars(node).items():
        dotted = f"{path}.{key}" if path else key
        if key not in fields:
            near = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"did you mean {path + '.' if path else ''}{near[0]}?" if near else f"fields: {sorted(fields)}"
            out.append(Violation("unknown-key", f"{dotted} is not in the recipe schema (added with '+'); {hint}"))
        else:
            out += _unknown_keys(value, dotted)
    return out


def _check_fields(recipe: Recipe) -> list[Violation]:
    out = _unknown_keys(recipe)
    out += [Violation(rule, message) for rule, message in recipe.data.problems()]  # data.config's rules
    for name, allowed in ENUMS.items():
        value = _get(recipe, name)
        if value is None and name == "precision.fp8":
            continue  # None = no FP8
        if value not in allowed:
            out.append(Violation("enum", f"{name}={value!r} is not one of {allowed}; use one of them"))
    for name in POSITIVE:
        value = _get(recipe, name)
        if value is not None and value < 1:
            out.append(Violation("positive", f"{name}={value} must be >= 1"))
    return out


def _check_tensor_parallel(recipe: Recipe, shape: ModelShape) -> list[Violation]:
    tp = recipe.parallel.tp
    problems = tp_width_problems(shape, tp)
    if not problems:
        return []
    fix = f"use tp in {_fmt(valid_tp_sizes(shape))}"
    return [Violation(rule, f"parallel.tp={tp} {what} of shape {shape.name}; {fix}") for rule, what in problems]


def _check_pipeline(recipe: Recipe, shape: ModelShape) -> list[Violation]:
    p, train = recipe.parallel, recipe.train
    out = []
    layers = shape.num_layers
    if layers % (p.pp * p.vpp):
        pps = [k for k in _divisors(layers) if layers % (k * p.vpp) == 0]
        vpps = [k for k in _divisors(layers) if layers % (p.pp * k) == 0]
        out.append(Violation("pp-layers", f"parallel.pp x parallel.vpp = {p.pp} x {p.vpp} = {p.pp * p.vpp} does not "
                             f"divide num_layers={layers} of shape {shape.name}; with vpp={p.vpp} use pp in "
                             f"{_fmt(pps)}, or with pp={p.pp} use vpp in {_fmt(vpps)}"))
    if p.vpp > 1 and p.pp == 1:
        out.append(Violation("vpp-needs-pp", f"parallel.vpp={p.vpp} needs parallel.pp > 1; set parallel.vpp=1 "
                             "or pipeline the model (parallel.pp >= 2)"))
    if p.pp == 2 and p.vpp > 1 and p.batch_p2p_comm:
        out.append(Violation("pp2-vpp-p2p", f"parallel.pp=2 with parallel.vpp={p.vpp} and batch_p2p_comm=True "
                             "computes wrong gradients silently (send/recv peers are the same rank); set "
                             "parallel.batch_p2p_comm=false"))
    if train.recompute == "full" and layers % (p.pp * p.vpp) == 0:
        per_chunk = layers // (p.pp * p.vpp)
        if per_chunk % train.recompute_num_layers:
            out.append(Violation("recompute-layers", f"train.recompute_num_layers={train.recompute_num_layers} "
                                 f"does not divide the {per_chunk} layers of each model chunk (num_layers={layers} "
                                 f"/ (pp x vpp = {p.pp * p.vpp})); use one of {_fmt(_divisors(per_chunk))}"))
    return out


def _check_sequence(recipe: Recipe, shape: ModelShape, spec: Optional[StageSpec]) -> list[Violation]:
    p, prec, seq = recipe.parallel, recipe.precision, recipe.train.seq_length
    out = []
    if p.sp and p.tp == 1:
        out.append(Violation("sp-needs-tp", "parallel.sp=true needs parallel.tp > 1; set parallel.sp=false or "
                             "parallel.tp >= 2"))
    if p.cp > 1 and seq % (2 * p.cp):
        out.append(Violation("cp-sequence", f"train.seq_length={seq} is not divisible by 2 x cp = {2 * p.cp} "
                             f"(context parallelism splits it into 2 x cp chunks); use a multiple of {2 * p.cp}"))
    if p.cp > 1 and spec is not None and spec.packs and recipe.data.packing:
        out.append(Violation("packing-cp", f"stage={recipe.stage.name} packs conversations (data.packing=true), "
                             f"which needs parallel.cp=1 (got cp={p.cp}); set parallel.cp=1 (SFT rows are short) or "
                             "data.packing=false"))
    per_cp = seq // p.cp
    if p.sp and p.tp > 1 and seq % p.cp == 0 and per_cp % p.tp:
        out.append(Violation("sp-sequence", f"with sequence parallelism the per-CP-rank length seq_length / cp = "
                             f"{seq} / {p.cp} = {per_cp} must be divisible by tp={p.tp}; use a seq_length "
                             f"multiple of cp x tp = {p.cp * p.tp}"))
    if prec.fp8 is not None:
        align = 32 if prec.fp8_recipe == "mxfp8" else 16
        lengths = {"per-CP-rank": (seq / p.cp, p.cp)}
        if p.sp and p.tp > 1:
            lengths["per-TP-rank (SP)"] = (seq / (p.cp * p.tp), p.cp * p.tp)
        for what, (length, divisor) in lengths.items():
            if length != int(length) or int(length) % align:
                out.append(Violation("fp8-sequence", f"FP8 ({prec.fp8_recipe}) needs the {what} sequence length "
                                     f"divisible by {align}; seq_length={seq} / {divisor} = {length:g}; use a "
                                     f"seq_length multiple of {align * divisor}"))
    if prec.fp8 is not None and p.cp > 1:
        multiple = math.lcm(32 if prec.fp8_recipe == "mxfp8" else 16, 2 * p.tp * p.cp)
        if seq % multiple:
            out.append(Violation("fp8-cp-sequence", f"FP8 with context parallelism needs seq_length divisible by "
                                 f"lcm(16, 2 x tp x cp) = {multiple}; seq_length={seq}: use "
                                 f"{max(multiple, seq // multiple * multiple)} or {(seq // multiple + 1) * multiple}"))
    yarn = recipe.model.yarn_factor
    limit = shape.max_position_embeddings * (yarn or 1)
    if seq > limit:
        covered = f"max_position_embeddings={shape.max_position_embeddings}"
        covered += f" x yarn_factor={yarn:g}" if yarn else ""
        out.append(Violation("positions", f"train.seq_length={seq} exceeds the {int(limit)} positions the model "
                             f"covers ({covered}); set model.yarn_factor={seq / shape.max_position_embeddings:g} "
                             "or shorten train.seq_length"))
    return out


def _check_precision(recipe: Recipe) -> list[Violation]:
    prec, out = recipe.precision, []
    if prec.fp8_param and prec.fp8 is None:
        out.append(Violation("fp8-param", "precision.fp8_param=true needs precision.fp8 (e4m3 or hybrid); set one "
                             "or precision.fp8_param=false"))
    for name, on in (("parallel.overlap_param_gather", recipe.parallel.overlap_param_gather),
                     ("precision.fp8_param", prec.fp8_param)):
        if on and not recipe.parallel.distributed_optimizer:
            out.append(Violation("distributed-optimizer", f"{name}=true needs parallel.distributed_optimizer=true "
                                 f"(it gathers parameters from the optimizer's shards); set it or {name}=false"))
    gpu = GPUS.get(recipe.run.gpu.lower())
    if gpu is None:
        out.append(Violation("gpu", f"run.gpu={recipe.run.gpu!r} is not in recipes.gpus; use one of {sorted(GPUS)}"))
    if prec.fp8 is None:
        return out
    if recipe.model.transformer_impl != "transformer_engine":
        out.append(Violation("fp8-impl", f"precision.fp8={prec.fp8} runs only in Transformer Engine but "
                             f"model.transformer_impl={recipe.model.transformer_impl}; set "
                             "model.transformer_impl=transformer_engine or precision.fp8=null"))
    if prec.dtype != "bf16":
        out.append(Violation("fp8-dtype", f"precision.fp8 needs precision.dtype=bf16 (got {prec.dtype}); set "
                             "precision.dtype=bf16 or precision.fp8=null"))
    need = FP8_RECIPE_MIN_CAPABILITY.get(prec.fp8_recipe)
    if gpu is not None and need is not None and gpu.compute_capability < need:
        ok = [name for name, cap in FP8_RECIPE_MIN_CAPABILITY.items() if gpu.compute_capability >= cap]
        fix = f"use precision.fp8_recipe in {_fmt(ok)}" if ok else "set precision.fp8=null (no FP8 on this GPU)"
        out.append(Violation("fp8-gpu", f"precision.fp8_recipe={prec.fp8_recipe} needs compute capability "
                             f">= {need[0]}.{need[1]} but run.gpu={gpu.name} is {gpu.compute_capability[0]}."
                             f"{gpu.compute_capability[1]}; {fix}"))
    te, need_te = installed_transformer_engine(), FP8_RECIPE_MIN_TE.get(prec.fp8_recipe)
    if te is not None and need_te is not None and te < need_te:
        ok = [name for name in FP8_RECIPE_MIN_CAPABILITY if te >= FP8_RECIPE_MIN_TE.get(name, (0, 0))]
        out.append(Violation("fp8-te-version", f"precision.fp8_recipe={prec.fp8_recipe} needs Transformer Engine "
                             f">= {need_te[0]}.{need_te[1]} but {te[0]}.{te[1]} is installed; upgrade "
                             f"transformer-engine (or a newer NGC container) or use precision.fp8_recipe in {_fmt(ok)}"))
    return out


def _check_eval_tasks(recipe: Recipe) -> list[Violation]:
    train, p = recipe.train, recipe.parallel
    if not train.eval_tasks:
        return []
    out = []
    if not (train.eval_tasks_interval or train.eval_interval):
        out.append(Violation("eval-tasks", f"train.eval_tasks={list(train.eval_tasks)} needs a cadence: "
                             "train.eval_tasks_interval is unset and train.eval_interval=0; set "
                             "train.eval_tasks_interval=N"))
    if train.eval_tasks_limit < 0:
        out.append(Violation("eval-tasks", f"train.eval_tasks_limit={train.eval_tasks_limit} must be >= 0 (the "
                             "first N problems of each task; 0 = all)"))
    refused = {"parallel.cp": p.cp if p.cp > 1 else None, "parallel.vpp": p.vpp if p.vpp > 1 else None,
               "precision.fp8": recipe.precision.fp8}
    for name, value in refused.items():
        if value is not None:
            out.append(Violation("eval-tasks", f"train.eval_tasks cannot decode with the live model at {name}="
                                 f"{value}; set train.eval_tasks=[] and evaluate the run's checkpoints with "
                                 "launch/evaluate.py --checkpoint (it reshards them to TP x PP)"))
    return out


def installed_transformer_engine() -> Optional[tuple[int, int]]:
    """(major, minor) of the installed Transformer Engine from its package metadata (no import), or None."""
    for name in ("transformer_engine", "transformer_engine_torch"):
        try:
            major, minor = importlib.metadata.version(name).split(".")[:2]
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    return None


def _stage(recipe: Recipe) -> tuple[Optional[StageSpec], list[Violation]]:
    """The recipe's stage spec and its own rules; (None, [the reason]) for a stage that is not registered."""
    try:
        spec = stage_spec(recipe.stage)
    except PluginImportError as error:
        return None, [Violation("stage-plugin", str(error))]
    except UnknownStage as error:
        return None, [Violation("enum", str(error))]
    return spec, [Violation(rule, message) for rule, message in (spec.rules(recipe) if spec.rules else [])]


def _check_schedule(recipe: Recipe) -> list[Violation]:
    opt = recipe.optimizer
    if opt.min_lr > opt.lr:
        return [Violation("schedule", f"optimizer.min_lr={opt.min_lr} exceeds optimizer.lr={opt.lr}; lower min_lr "
                          f"to at most {opt.lr}")]
    return []


def _check_world(recipe: Recipe, world_size: int) -> list[Violation]:
    p, train = recipe.parallel, recipe.train
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        return [Violation("world-size", f"world size {world_size} is not a multiple of tp x pp x cp = {p.tp} x "
                          f"{p.pp} x {p.cp} = {model_parallel}; run on a multiple of {model_parallel} GPUs "
                          f"(e.g. {model_parallel * -(-world_size // model_parallel)}) or change the layout")]
    layout = layout_of(recipe, world_size)
    dp = layout.dp
    per_step = train.micro_batch_size * dp
    if train.global_batch_size % per_step:
        low = train.global_batch_size // per_step * per_step or per_step
        return [Violation("global-batch", f"train.global_batch_size={train.global_batch_size} is not a multiple of "
                          f"micro_batch_size x dp = {train.micro_batch_size} x {dp} = {per_step}; use "
                          f"{low} or {low + per_step}")]
    microbatches = layout.num_microbatches
    if p.vpp > 1 and microbatches % p.pp:
        return [Violation("vpp-microbatches", f"interleaved pipelining (vpp={p.vpp}) needs the micro-batches per "
                          f"step, global_batch_size / (micro_batch_size x dp) = {microbatches}, to be a multiple "
                          f"of pp={p.pp}; use global_batch_size={per_step * p.pp * max(1, microbatches // p.pp)}")]
    return []


def check(recipe: Recipe, world_size: Optional[int] = None) -> list[Violation]:
    """All violations of `recipe` (world-size rules only when `world_size` is given)."""
    out = _check_fields(recipe)
    if any(v.rule == "positive" for v in out):
        return out  # divisibility checks on zero or negative sizes would only add noise
    try:
        shape = recipe.model_shape()
    except (KeyError, ValueError) as error:  # unknown shape name, or shrink overrides breaking GQA
        return out + [Violation("shape", str(error).strip('"'))]
    out += _check_tensor_parallel(recipe, shape)
    out += _check_pipeline(recipe, shape)
    spec, stage_rules = _stage(recipe)
    out += _check_sequence(recipe, shape, spec)
    out += _check_precision(recipe)
    out += _check_schedule(recipe)
    out += _check_eval_tasks(recipe)
    out += stage_rules
    if world_size is not None:
        out += _check_world(recipe, world_size)
    return out


def rope_base_in_use(recipe: Recipe, recorded: Optional[float], source: str = "the checkpoint") -> float:
    """The RoPE base a run trains with (ModelConfig.rope_base): `recorded` is the base of the checkpoint `source`
    it loads or resumes (train.checkpoint.recorded_rope_base), None for a fresh init. Rule rope-base: an explicit
    model.rope_base that disagrees with the checkpoint at a stage that keeps the base is refused."""
    explicit, stage = recipe.model.rope_base, recipe.stage
    if recorded is None or stage.rope_base_switch:
        return explicit if explicit is not None else stage.rope_base
    if explicit is not None and explicit != recorded:
        raise RecipeError([Violation("rope-base", (
            f"model.rope_base={explicit:g} but {source} was trained with RoPE base {recorded:g}, and stage="
            f"{stage.name} continues a checkpoint at its own base (only stages with stage.rope_base_switch, repo "
            f"and long, change it). Drop model.rope_base (or set it to {recorded:g}) to continue these weights"))])
    return recorded


def describe_rope(recipe: Recipe, recorded: Optional[float] = None) -> str:
    """The base in use and why, plus YaRN (planner and run log)."""
    base = rope_base_in_use(recipe, recorded)
    if recipe.model.rope_base is not None and (recorded is None or recipe.stage.rope_base_switch):
        why = "model.rope_base"
    elif recorded is not None and not recipe.stage.rope_base_switch:
        why = "the loaded checkpoint's"
    else:
        why = f"stage {recipe.stage.name}" + (", set over any checkpoint" if recipe.stage.rope_base_switch else
                                              ", fresh init; a loaded checkpoint keeps its own")
    yarn = recipe.yarn_scaling()
    extension = f", YaRN x{yarn.factor:g} over {yarn.original_max_position_embeddings:,} positions" if yarn else ""
    return f"RoPE base {base:,.0f} ({why}){extension}"


def validate(recipe: Recipe, world_size: Optional[int] = None) -> Recipe:
    """Raise RecipeError listing every broken rule; return the recipe unchanged when it passes."""
    violations = check(recipe, world_size)
    if violations:
        raise RecipeError(violations)
    return recipe
