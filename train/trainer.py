"""One training step on megatron-core: model chunks in DDP, the megatron optimizer, the LR schedule.

A `Trainer` owns what a step needs and nothing about where data comes from or where metrics go (train.loop).
Tests drive it directly: `forward_backward` leaves every parameter's reduced gradient in `param.main_grad`
(inspectable), `optimizer_step` applies it. That split is what lets the parallel-equivalence suite compare
gradients of every layout against one rank.

Loss: per-token mean over the whole global batch (TransformerConfig.calculate_per_token_loss): each micro-batch
returns (sum of token losses, token count); megatron sums gradients over micro-batches and data/context ranks
and divides by the global token count in finalize_model_grads. With partial loss masks (FIM padding, SFT prompts)
this is the true mean, unlike averaging micro-batch means.

Packed sequences (data.packing, stage=sft): a row holds several conversations and its position ids restart at
0 where each begins (data.sft). `pack_micro_batch` turns the micro-batch into megatron's `thd` format: the rows
are concatenated into one sequence of micro x seq tokens ([1, t]), and cu_seqlens marks every position-0 token
as a document start, so attention (model.layers.SDPACoreAttention on the local spec, TE's fused attention on
GPUs) and RoPE restart per conversation; labels and loss_mask are flattened alike, so the loss is unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator, List, Optional

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_batch_on_this_cp_rank

from model.build import build_gpt_model, resolve_transformer_impl
from recipes.schema import Recipe
from recipes.world import layout_of
from train import dpo, megatron_args
from train.distributed import init_model_parallel, rank_device, to_model_device


class TrainingDiverged(RuntimeError):
    """Loss or gradient norm became NaN/Inf; raised before the optimizer applies the update."""


@dataclass
class StepResult:
    loss: float  # per-token mean over the global batch
    tokens: int  # tokens that carried loss in the global batch
    grad_norm: Optional[float] = None
    lr: Optional[float] = None
    metrics: dict = field(default_factory=dict)  # stage=dpo: train.dpo.METRICS, means over the batch's pairs


def _loss_func(loss_mask: torch.Tensor, dataset_id: Optional[torch.Tensor], num_sources: int,
               per_token_loss: torch.Tensor):
    """megatron's 3-tuple loss contract: (summed loss, token count, what to report).

    With the blend's per-sample `dataset_id`, the report also holds (loss sum, tokens) per source
    ("source loss", [num_sources, 2]), so validation is read per source without another pass.
    """
    mask = loss_mask.float()
    losses = per_token_loss.float().reshape(mask.shape) * mask
    loss_sum = losses.sum()
    tokens = mask.sum().to(torch.int)
    reports = {"lm loss": torch.stack([loss_sum.detach(), tokens.float()])}
    if dataset_id is not None and num_sources:
        per_sample = torch.stack([losses.detach().sum(dim=1), mask.sum(dim=1)], dim=1)
        per_source = torch.zeros(num_sources, 2, dtype=per_sample.dtype, device=per_sample.device)
        reports["source loss"] = per_source.index_add_(0, dataset_id.to(per_sample.device).long(), per_sample)
    return loss_sum, tokens, reports


def split_for_cp_rank(batch: dict) -> dict:
    """This context-parallel rank's share of a micro-batch.

    megatron's get_batch_on_this_cp_rank cuts every field along the sequence dimension; per-sample fields
    (the blend's `dataset_id`, shape [b]) have none, so they pass whole and only [b, s, ...] fields are cut.
    """
    per_sample = {k: v for k, v in batch.items() if v.dim() < 2}
    sliced = get_batch_on_this_cp_rank({k: v for k, v in batch.items() if k not in per_sample})
    return {**sliced, **per_sample}


def pack_micro_batch(batch: dict) -> tuple[dict, PackedSeqParams]:
    """The micro-batch as one `thd` sequence [1, micro x seq]; a document starts at every position id 0."""
    flat = {key: value.reshape(1, -1) for key, value in batch.items()}
    positions = flat["position_ids"][0]
    if positions[0] != 0:
        raise ValueError("a packed row must start a document (position id 0 first)")
    starts = torch.nonzero(positions == 0).flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([positions.numel()])]).to(torch.int32)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                             max_seqlen_q=longest, max_seqlen_kv=longest)
    return flat, params


def forward_step(data_iterator: Iterator[dict], model, packed: bool = False, num_sources: int = 0):
    """Fetch one micro-batch, keep this context-parallel rank's share of it, run the model chunk.

    packed: the rows hold several documents each (see the module docstring); refused with CP > 1 by the
    recipe validator, so there is no context-parallel share to take.
    """
    batch = to_model_device(dict(next(data_iterator)), model)
    params = None
    if packed:
        batch, params = pack_micro_batch(batch)
    else:
        batch = split_for_cp_rank(batch)
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                           packed_seq_params=params)
    return per_token_loss, partial(_loss_func, batch["loss_mask"], batch.get("dataset_id"), num_sources)


class Trainer:
    """Builds the sharded model, optimizer and schedule for `recipe` on the current torch.distributed world."""

    def __init__(self, recipe: Recipe, *, train_iters: Optional[int] = None):
        self.recipe = recipe
        self.packed = recipe.stage.name == "sft" and recipe.data.packing
        self.dpo = dpo.DPOSettings.of(recipe.stage) if recipe.stage.name == "dpo" else None  # rows come in pairs
        self.last_metrics: dict = {}
        parallel = recipe.parallel
        init_model_parallel(parallel.tp, parallel.pp, parallel.vpp, parallel.cp, seed=recipe.train.seed)
        self.shape = recipe.model_shape()
        self.transformer_impl = resolve_transformer_impl(recipe.model.transformer_impl)
        self.config = megatron_args.build_transformer_config(recipe, calculate_per_token_loss=True)
        self.model: List[DistributedDataParallel] = self._build_model_chunks()
        self.optimizer = get_megatron_optimizer(megatron_args.optimizer_config(recipe), self.model)
        self.scheduler = self._build_scheduler(train_iters or recipe.train.train_iters)
        layout = layout_of(recipe, torch.distributed.get_world_size())
        self.data_parallel_size, self.num_microbatches = layout.dp, layout.num_microbatches

    # ---- construction -------------------------------------------------------------------------
    def _build_model_chunks(self) -> List[DistributedDataParallel]:
        vpp = self.recipe.parallel.vpp
        chunks = []
        for vp_stage in range(vpp) if vpp > 1 else [None]:
            module = build_gpt_model(
                self.shape,
                self.config,
                transformer_impl=self.transformer_impl,
                max_sequence_length=self.recipe.train.seq_length,
                yarn=self.recipe.yarn_scaling(),
                vp_stage=vp_stage,
            )
            if torch.cuda.is_available():
                module.cuda(torch.cuda.current_device())
            chunks.append(
                DistributedDataParallel(
                    self.config,
                    megatron_args.ddp_config(self.recipe),
                    module,
                    disable_bucketing=vp_stage is not None and vp_stage > 0,
                )
            )
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
                      reference_pass: bool = False):
        iterators = data_iterators if len(self.model) > 1 else data_iterators[0]
        if self.dpo is not None:  # a sample is a (chosen, rejected) pair: 2 x micro_batch_size sequences
            step = partial(dpo.forward_step, self.dpo, reference_pass=reference_pass)
        else:
            step = partial(forward_step, packed=self.packed, num_sources=len(self.recipe.data.sources))
        seq_length, micro_batch_size = self.recipe.train.seq_length, self.recipe.train.micro_batch_size
        if self.dpo is not None:
            micro_batch_size *= 2
        if self.packed:  # one [1, micro x seq] sequence flows between pipeline stages
            seq_length, micro_batch_size = seq_length * micro_batch_size, 1
        return get_forward_backward_func()(
            forward_step_func=step,
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
        if self.dpo is not None:
            sums = self._reduce_reports(reports, dpo.METRICS_REPORT, (len(dpo.METRICS),))
            self.last_metrics = {name: value / count for name, value in zip(dpo.METRICS, sums.tolist())}
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
    def reference_pass(self, data_iterators: List[Iterator[dict]]) -> list:
        """stage=dpo: one global batch forward only; the last stage's reports of (pair, logp_c, logp_r) rows."""
        for chunk in self.model:
            chunk.eval()
        reports = self._run_schedule(data_iterators, self.num_microbatches, forward_only=True, reference_pass=True)
        for chunk in self.model:
            chunk.train()
        return reports

    @torch.no_grad()
    def evaluate(self, data_iterators: List[Iterator[dict]], num_batches: int) -> dict:
        """Per-token validation loss over `num_batches` global batches (no gradients, no update).

        Returns {"val_loss": the blend} and {"val_loss/NAME": loss} for each data source with loss tokens in
        those batches (blended pretraining samples carry their source's index; SFT samples do not). stage=dpo:
        val_loss is the DPO loss per pair, and {"val_" + name: mean} of train.dpo.METRICS (rewards, accuracy).
        """
        for chunk in self.model:
            chunk.eval()
        names = [source.name for source in self.recipe.data.sources]
        total = torch.zeros(2, dtype=torch.float64)
        per_source = torch.zeros(len(names), 2, dtype=torch.float64)
        dpo_sums = torch.zeros(len(dpo.METRICS), dtype=torch.float64)
        for _ in range(num_batches):
            reports = self._run_schedule(data_iterators, self.num_microbatches, forward_only=True)
            total += self._reduce_reports(reports, "lm loss", (2,))
            per_source += self._reduce_reports(reports, "source loss", (len(names), 2))
            if self.dpo is not None:
                dpo_sums += self._reduce_reports(reports, dpo.METRICS_REPORT, (len(dpo.METRICS),))
        for chunk in self.model:
            chunk.train()
        result = {"val_loss": (total[0] / total[1]).item() if total[1] > 0 else float("nan")}
        result.update({f"val_loss/{name}": loss / tokens
                       for name, (loss, tokens) in zip(names, per_source.tolist()) if tokens > 0})
        if self.dpo is not None and total[1] > 0:
            pairs = total[1].item()
            result.update({f"val_{name}": value / pairs for name, value in zip(dpo.METRICS, dpo_sums.tolist())})
        return result

    # ---- reductions ---------------------------------------------------------------------------
    def _global_loss(self, reports: list) -> tuple[float, int]:
        loss_sum, tokens = self._reduce_reports(reports, "lm loss", (2,)).tolist()
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
