"""One training step on megatron-core: model chunks in DDP, the megatron optimizer, the LR schedule.

A `Trainer` owns what a step needs and nothing about where data comes from or where metrics go (train.loop).
Tests drive it directly: `forward_backward` leaves every parameter's reduced gradient in `param.main_grad`
(inspectable), `optimizer_step` applies it. That split is what lets the parallel-equivalence suite compare
gradients of every layout against one rank.

The stage's objective (train.objectives, named by the recipe's stage in recipes.stages) supplies the forward
step, the loss and what it reports; the trainer runs megatron's schedules with it and reduces the reports: the
loss is the objective's per-unit mean over the whole global batch (tokens, or pairs for DPO), its metrics the
means over the same units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from model.build import build_gpt_model, resolve_transformer_impl
from recipes.schema import Recipe
from recipes.world import layout_of
from train import megatron_args
from train.distributed import init_model_parallel, rank_device
from train.objectives import objective_for
from train.objectives.base import LOSS_REPORT, METRICS_REPORT, SOURCE_REPORT


class TrainingDiverged(RuntimeError):
    """Loss or gradient norm became NaN/Inf; raised before the optimizer applies the update."""


@dataclass
class StepResult:
    loss: float  # per-token mean over the global batch
    tokens: int  # tokens that carried loss in the global batch
    grad_norm: Optional[float] = None
    lr: Optional[float] = None
    metrics: dict = field(default_factory=dict)  # the stage's metrics (StageSpec.metrics), means over the batch


def build_model_chunks(recipe: Recipe, config) -> list:
    """The recipe's GPTModel, one chunk per virtual pipeline stage, on this rank's GPU when there is one; no DDP
    wrapper and no optimizer (those are training's). Needs the model-parallel groups (init_model_parallel)."""
    vpp = recipe.parallel.vpp
    chunks = []
    for vp_stage in range(vpp) if vpp > 1 else [None]:
        module = build_gpt_model(
            recipe.model_shape(),
            config,
            transformer_impl=resolve_transformer_impl(recipe.model.transformer_impl),
            max_sequence_length=recipe.train.seq_length,
            yarn=recipe.yarn_scaling(),
            vp_stage=vp_stage,
        )
        if torch.cuda.is_available():
            module.cuda(torch.cuda.current_device())
        chunks.append(module)
    return chunks


def build_inference_model(recipe: Recipe) -> list:
    """The model for evaluation and decoding: build_model_chunks in this layout, nothing else. A Trainer would
    also allocate the DDP gradient buffers and the optimizer (4 + 12 bytes per parameter and rank)."""
    parallel = recipe.parallel
    init_model_parallel(parallel.tp, parallel.pp, parallel.vpp, parallel.cp, seed=recipe.train.seed)
    return build_model_chunks(recipe, megatron_args.build_transformer_config(recipe))


class Trainer:
    """Builds the sharded model, optimizer and schedule for `recipe` on the current torch.distributed world."""

    def __init__(self, recipe: Recipe, *, train_iters: Optional[int] = None):
        self.recipe = recipe
        self.objective = objective_for(recipe)
        self.last_metrics: dict = {}
        parallel = recipe.parallel
        init_model_parallel(parallel.tp, parallel.pp, parallel.vpp, parallel.cp, seed=recipe.train.seed)
        self.shape = recipe.model_shape()
        self.transformer_impl = resolve_transformer_impl(recipe.model.transformer_impl)  # the layer spec built
        self.config = megatron_args.build_transformer_config(recipe, calculate_per_token_loss=True)
        self.model: List[DistributedDataParallel] = self._build_model_chunks()
        self.optimizer = get_megatron_optimizer(megatron_args.optimizer_config(recipe), self.model)
        self.scheduler = self._build_scheduler(train_iters or recipe.train.train_iters)
        layout = layout_of(recipe, torch.distributed.get_world_size())
        self.data_parallel_size, self.num_microbatches = layout.dp, layout.num_microbatches

    # ---- construction -------------------------------------------------------------------------
    def _build_model_chunks(self) -> List[DistributedDataParallel]:
        chunks = [
            DistributedDataParallel(self.config, megatron_args.ddp_config(self.recipe), module,
                                    disable_bucketing=vp_stage > 0)
            for vp_stage, module in enumerate(build_model_chunks(self.recipe, self.config))
        ]
        self.config.finalize_model_grads_func = finalize_model_grads
        self.config.no_sync_func = [chunk.no_sync for chunk in chunks]
        self.config.grad_sync_func = [chunk.start_grad_sync for chunk in chunks]
        if len(chunks) == 1:
            self.config.no_sync_func = self.config.no_sync_func[0]
            self.config.grad_sync_func = self.config.grad_sync_func[0]
        if not self.recipe.parallel.overlap_grad_reduce:
            self.config.grad_sync_func = None
        return chunks

    def _build_scheduler(self, train_iters: int) -> OptimizerParamScheduler:
        opt = self.recipe.optimizer
        warmup = min(opt.warmup_iters, max(train_iters - 1, 0))  # a smoke run shorter than the warmup still runs
        return OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0 if warmup else opt.lr,
            max_lr=opt.lr,
            min_lr=opt.min_lr,
            lr_warmup_steps=warmup,
            lr_decay_steps=max(train_iters, 1),
            lr_decay_style=opt.decay_style,
            start_wd=opt.weight_decay,
            end_wd=opt.weight_decay,
            wd_incr_steps=max(train_iters, 1),
            wd_incr_style="constant",
        )

    # ---- one step -----------------------------------------------------------------------------
    def _run_schedule(self, data_iterators: List[Iterator[dict]], num_microbatches: int, forward_only: bool,
                      step: Optional[Callable] = None):
        """One global batch through megatron's schedule with `step` (default: the objective's forward step)."""
        iterators = data_iterators if len(self.model) > 1 else data_iterators[0]
        seq_length, micro_batch_size = self.objective.schedule_shape()
        return get_forward_backward_func()(
            forward_step_func=step or self.objective.forward_step,
            data_iterator=iterators,
            model=self.model,
            num_microbatches=num_microbatches,
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            forward_only=forward_only,
        )

    def forward_backward(self, data_iterators: List[Iterator[dict]]) -> tuple[float, int]:
        """Run all micro-batches of one global batch; reduced grads end up in each param.main_grad.

        `data_iterators` holds one iterator per model chunk (virtual pipeline stage), each yielding this
        data-parallel rank's micro-batches. Returns (global per-token loss, global loss tokens).
        """
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._run_schedule(data_iterators, self.num_microbatches, forward_only=False)
        loss, count = self._global_loss(reports)
        metrics = self.objective.spec.metrics
        if metrics:
            sums = self._reduce_reports(reports, METRICS_REPORT, (len(metrics),))
            self.last_metrics = {name: value / count for name, value in zip(metrics, sums.tolist())}
        return loss, count

    def optimizer_step(self, step: int, loss: float) -> StepResult:
        """Refuse a non-finite loss, clip, apply the update, advance the LR schedule."""
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"step {step}: loss is {loss}; the update was NOT applied and no checkpoint of it is written. "
                "Lower optimizer.lr, raise optimizer.warmup_iters, or resume from the last checkpoint."
            )
        _, grad_norm, _ = self.optimizer.step()
        if grad_norm is not None and not math.isfinite(grad_norm):
            raise TrainingDiverged(f"step {step}: gradient norm is {grad_norm}; stopping (see loss above).")
        self.scheduler.step(increment=1)
        return StepResult(loss=loss, tokens=0, grad_norm=grad_norm, lr=self.optimizer.param_groups[0]["lr"])

    def sync_params(self) -> None:
        """Complete the all-gather of updated parameters now. With overlap_param_gather it is deferred to the
        next forward's pre-hooks, so after a step each rank holds current values only in its own optimizer
        shard; a checkpoint written then would store stale weights for every other shard. The forced
        gather marks the buckets dispatched, so the next forward does not gather again."""
        if self.recipe.parallel.overlap_param_gather and self.recipe.parallel.distributed_optimizer:
            for chunk in self.model:
                chunk.start_param_sync(force_sync=True)

    def train_step(self, step: int, data_iterators: List[Iterator[dict]]) -> StepResult:
        for chunk in self.model:
            chunk.train()
        loss, tokens = self.forward_backward(data_iterators)
        result = self.optimizer_step(step, loss)
        result.tokens, result.metrics = tokens, dict(self.last_metrics)
        return result

    @torch.no_grad()
    def forward_only(self, data_iterators: List[Iterator[dict]], step: Callable) -> list:
        """One global batch forward only with another forward step (an objective's prepare pass, e.g. DPO's
        reference); the last pipeline stage's reports, unreduced."""
        for chunk in self.model:
            chunk.eval()
        reports = self._run_schedule(data_iterators, self.num_microbatches, forward_only=True, step=step)
        for chunk in self.model:
            chunk.train()
        return reports

    @torch.no_grad()
    def evaluate(self, data_iterators: List[Iterator[dict]], num_batches: int) -> dict:
        """Per-token validation loss over `num_batches` global batches (no gradients, no update).

        Returns {"val_loss": the blend} and {"val_loss/NAME": loss} for each data source with loss tokens in
        those batches (blended pretraining samples carry their source's index; SFT samples do not), and
        {"val_" + name: mean} of the stage's metrics (DPO: val_loss is per pair, plus its rewards and accuracy).
        """
        for chunk in self.model:
            chunk.eval()
        names = [source.name for source in self.recipe.data.sources]
        total = torch.zeros(2, dtype=torch.float64)
        per_source = torch.zeros(len(names), 2, dtype=torch.float64)
        metrics = self.objective.spec.metrics
        metric_sums = torch.zeros(len(metrics), dtype=torch.float64)
        for _ in range(num_batches):
            reports = self._run_schedule(data_iterators, self.num_microbatches, forward_only=True)
            total += self._reduce_reports(reports, LOSS_REPORT, (2,))
            per_source += self._reduce_reports(reports, SOURCE_REPORT, (len(names), 2))
            if metrics:
                metric_sums += self._reduce_reports(reports, METRICS_REPORT, (len(metrics),))
        for chunk in self.model:
            chunk.train()
        result = {"val_loss": (total[0] / total[1]).item() if total[1] > 0 else float("nan")}
        result.update({f"val_loss/{name}": loss / tokens
                       for name, (loss, tokens) in zip(names, per_source.tolist()) if tokens > 0})
        if metrics and total[1] > 0:
            count = total[1].item()
            result.update({f"val_{name}": value / count for name, value in zip(metrics, metric_sums.tolist())})
        return result

    # ---- reductions ---------------------------------------------------------------------------
    def _global_loss(self, reports: list) -> tuple[float, int]:
        loss_sum, tokens = self._reduce_reports(reports, LOSS_REPORT, (2,)).tolist()
        return (loss_sum / tokens if tokens else float("nan")), int(tokens)

    def _reduce_reports(self, reports: list, key: str, shape: tuple) -> torch.Tensor:
        """Sum one report over micro-batches and data x context ranks; share it with every PP stage (on CPU)."""
        totals = torch.zeros(shape, dtype=torch.float64, device=rank_device())
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            for report in reports:
                if key in report:
                    totals += report[key].to(totals)
            torch.distributed.all_reduce(
                totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True)
            )
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.broadcast(
                totals,
                src=parallel_state.get_pipeline_model_parallel_last_rank(),
                group=parallel_state.get_pipeline_model_parallel_group(),
            )
        return totals.cpu()
