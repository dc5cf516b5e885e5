"""What a recipe may say: typed dataclasses registered in Hydra's ConfigStore.

YAML files under recipes/ say what differs (a size's layout per stage); these classes say what exists and which
values are allowed, so `parallel.tpp=2` or `train.micro_batch_size=two` fail at compose time with Hydra's own
message. Cross-field layout rules (heads % TP, layers % PP x VPP, ...) live in one place, recipes.validate,
and run when the composed config becomes these objects (`recipes.compose.to_recipe`).

Config tree (Hydra): recipes/config.yaml (this schema) <- `+recipe=SIZE` (recipes/recipe/SIZE.yaml) which
pulls `stage: file|repo|long|sft|dpo` (recipes/stage/*.yaml, what a stage means for any size) and then the tuned
layout for that size and stage (recipes/layout/SIZE/STAGE.yaml). Command-line overrides win over all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from data.config import DataConfig
from model.families import get_shape
from model.shapes import ModelShape, YarnScaling

_SHRINKABLE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "head_dim", "vocab_size", "tied_embeddings")


@dataclass
class ModelConfig:
    shape: str = MISSING
    """Row of model.families.SHAPES (model/families/qwen2.py): tiny, 0.5b, 1.5b, 3b, 7b, 14b, 32b."""
    num_layers: Optional[int] = None
    """Shrink the shape's depth (tests, smoke runs); None keeps the released value. Same for the fields below."""
    hidden_size: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_query_groups: Optional[int] = None
    head_dim: Optional[int] = None
    vocab_size: Optional[int] = None
    tied_embeddings: Optional[bool] = None
    transformer_impl: str = "auto"
    """auto (Transformer Engine when it imports and a GPU is present), transformer_engine, or local."""
    yarn_factor: Optional[float] = None
    """YaRN context extension factor (repo stage: 4.0, 32K -> 128K positions); None = plain RoPE."""
    yarn_original_max_position_embeddings: int = 32_768
    rope_base: Optional[float] = None
    """RoPE base (HF rope_theta). None = auto, resolved when the run starts (recipes.validate.rope_base_in_use):
    a fresh init trains with stage.rope_base; a run that loads or resumes a checkpoint keeps the base that
    checkpoint records (HF imports record config.json's rope_theta: 1e6 for every released Qwen2.5-Coder), except
    at a stage that switches it (stage.rope_base_switch: repo and long set 1e6 over a 1e4 stage-1 checkpoint).
    An explicit value must equal the checkpoint's outside such a switch (RoPE positions of trained weights would
    silently change otherwise); at a fresh init or a switching stage it replaces stage.rope_base."""


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor parallel size (within a node: NVLink)."""
    sp: bool = False
    """Sequence parallelism (needs tp > 1): shards norms/dropout activations over TP."""
    pp: int = 1
    """Pipeline parallel stages."""
    vpp: int = 1
    """Virtual pipeline chunks per stage (interleaved 1F1B); 1 = plain 1F1B."""
    cp: int = 1
    """Context parallel size: the sequence is split into 2 x cp load-balanced chunks."""
    distributed_optimizer: bool = True
    """Shard fp32 master weights and Adam moments over data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Reduce(-scatter) gradients bucket by bucket during the backward pass instead of after it."""
    overlap_param_gather: bool = False
    """All-gather updated parameters bucket by bucket in the next forward (needs distributed_optimizer)."""
    batch_p2p_comm: bool = False
    """Batched pipeline send/recv. Must stay False when pp == 2 and vpp > 1 (wrong grads otherwise)."""


@dataclass
class PrecisionConfig:
    dtype: str = "bf16"
    """bf16 or fp32 (fp32 for parity/equivalence tests)."""
    fp8: Optional[str] = None
    """None, e4m3 or hybrid (e4m3 forward, e5m2 gradients). Transformer Engine only."""
    fp8_recipe: str = "delayed"
    """delayed, tensorwise, blockwise (H100/H200 with CUDA >= 12.9) or mxfp8 (Blackwell only)."""
    fp8_param: bool = False
    """Keep the model's weights in FP8 (needs parallel.distributed_optimizer)."""
    fp8_attention: bool = False
    """FP8 also in core attention (TE fused attention); off: FP8 only on the linear layers' GEMMs."""
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"
    grad_reduce_in_fp32: bool = True


@dataclass
class TrainConfig:
    seq_length: int = 8192
    micro_batch_size: int = 1
    global_batch_size: int = 32
    train_iters: int = 1000
    log_interval: int = 1
    eval_interval: int = 100
    eval_iters: int = 4
    eval_tasks: List[str] = field(default_factory=list)
    """Evaluation tasks (launch/evaluate.py --tasks names, or `paper`) the LIVE model decodes greedily in its
    training layout and rank 0 scores in the sandbox, logged as eval/TASK/METRIC at the step
    (evaluation.during_training), e.g. train.eval_tasks=[humaneval,fim_singleline]; [] = off. Not with
    parallel.cp > 1, parallel.vpp > 1 or precision.fp8: evaluate those runs' checkpoints with launch/evaluate.py."""
    eval_tasks_interval: Optional[int] = None
    """Steps between task evaluations; None = train.eval_interval (the validation cadence)."""
    eval_tasks_limit: int = 20
    """First N problems of each task (0 = all: each evaluation then decodes whole benchmarks)."""
    eval_tasks_max_new_tokens: Optional[int] = None
    """Token budget per completion; None = each task's own (512 for humaneval, 64 for the infilling tasks)."""
    seed: int = 1234
    recompute: str = "none"
    """none, selective (core attention) or full (whole layers, recompute_num_layers per stage)."""
    recompute_num_layers: int = 1


@dataclass
class OptimizerConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_iters: int = 500
    decay_style: str = "cosine"
    """cosine, linear or constant (after warmup)."""
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass
class StageConfig:
    name: str = "file"
    """A registered stage (recipes.stages): file (8K next-token + FIM), repo (32K repo-level, FP8), long (repo at
    128K, YaRN x4), sft or dpo."""
    plugin: Optional[str] = None
    """Module that registers a stage from outside this repository (recipes.stages.register_stage), imported before
    the stage registry is asked; None for the stages built in."""
    rope_base: float = 10_000.0
    """RoPE base this stage trains with from a fresh init (the Qwen2.5-Coder report: 10,000 for the file-level
    stage, 1,000,000 from the repo-level stage on; sft/dpo: 1e6, the released models'); see model.rope_base."""
    rope_base_switch: bool = False
    """True where the stage sets stage.rope_base over whatever checkpoint it loads (repo, long); False (file,
    sft, dpo) keeps the loaded checkpoint's recorded base."""
    dpo_beta: float = 0.1
    """stage=dpo: beta, the strength of the KL tie to the reference (train.objectives.dpo); > 0."""
    dpo_label_smoothing: float = 0.0
    """stage=dpo: conservative DPO's probability that a pair's label is flipped, in [0, 0.5); 0 = plain DPO."""
    dpo_nll_weight: float = 0.0
    """stage=dpo: weight of an added NLL term on the chosen reply (per-token mean); 0 = none."""


@dataclass
class CheckpointConfig:
    save_interval: int = 1000
    """Save every N steps (and at the end); 0 disables periodic saves."""
    load: Optional[str] = None
    """Initial weights (a converted Hugging Face checkpoint) when the run dir has no checkpoint yet."""
    keep_last: int = 2
    """Complete checkpoints kept in the run dir; older ones are deleted after a newer one is complete."""
    reshardable_optimizer: bool = False
    """Save the distributed optimizer so any TP/PP/CP layout can resume it (all-gathers over DP at each save);
    False writes per-rank shards with no communication, resumable at another DP size only."""
    allow_data_order_change: bool = False
    """Resume even though the data order differs from the checkpoint's (train_iters x global batch, seeds,
    sources, split, sequence length, FIM): samples already trained on may be seen again and others skipped."""


@dataclass
class LoggingConfig:
    wandb: bool = True
    """Log to Weights & Biases from one rank; offline unless WANDB_MODE says otherwise."""
    wandb_project: str = "qwen2.5-coder"
    wandb_group: Optional[str] = None
    """W&B group; None groups by SIZE-STAGE. launch/pipeline.py puts all of its stages in one group."""
    progress_bar: bool = True
    plots: bool = True


@dataclass
class RunConfig:
    name: str = "${model.shape}-${stage.name}"
    dir: str = "runs/${run.name}"
    """Run directory: checkpoints, metrics.jsonl, plots, per-rank logs. Stable per job (resume finds it)."""
    nodes: int = 1
    """Nodes the recipe is tuned for; world size = nodes x gpus_per_node (planner, validator, k8s manifests)."""
    gpus_per_node: int = 8
    """GPUs (ranks) per node: 8 on H100 HGX nodes, 2 CPU ranks for the tiny recipe."""
    gpu: str = "h100"
    """GPU model for the planner's memory budget, FP8 support and MFU's peak FLOP/s (table in recipes.gpus)."""
    gpu_memory_gib: Optional[float] = None
    """Override the GPU table's memory (GiB) for the planner's fit check."""
    peak_tflops: Optional[float] = None
    """Override the GPU table's dense bf16 peak (e.g. for a different card)."""


@dataclass
class PlanConfig:
    format: str = "text"
    """launch/plan.py output: text (a report) or json (one object). Ignored by training."""
    meta_build: bool = True
    """Also build every pipeline stage on the meta device under a fake process group to count its parameters."""


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)

    def model_shape(self) -> ModelShape:
        """The recipe's shape with its shrink overrides (model.num_layers=2, ...) applied, and its RoPE base:
        model.rope_base once set (train.loop resolves auto against the checkpoint it loads), else the stage's
        fresh-init base."""
        overrides = {name: getattr(self.model, name) for name in _SHRINKABLE}
        overrides["rope_theta"] = self.model.rope_base if self.model.rope_base is not None else self.stage.rope_base
        return get_shape(self.model.shape, **{k: v for k, v in overrides.items() if v is not None})

    def yarn_scaling(self) -> Optional[YarnScaling]:
        """YaRN scaling of the recipe's positions, or None for plain RoPE."""
        if self.model.yarn_factor is None:
            return None
        return YarnScaling(factor=self.model.yarn_factor,
                           original_max_position_embeddings=self.model.yarn_original_max_position_embeddings)


def register() -> None:
    """Register the schema as `recipe_schema` (recipes/config.yaml lists it first in its defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="recipe_schema", node=Recipe)
