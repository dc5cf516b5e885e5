"""Direct preference optimisation (Rafailov et al. 2023) on megatron-core: the loss of one micro-batch of pairs.

Per pair, with sequence log-probabilities summed over the response tokens (the reply and its <|im_end|>,
data.preference) of the policy (logp) and of the frozen starting policy (ref, train.dpo_reference):
    margin  = beta x ((logp_c - ref_c) - (logp_r - ref_r))
    loss    = -(1 - eps) log sigmoid(margin) - eps log sigmoid(-margin)          eps: stage.dpo_label_smoothing
              + nll_weight x (-logp_c / chosen response tokens)                 nll_weight: stage.dpo_nll_weight
eps > 0 is conservative DPO (Mitchell 2023: labels flipped with probability eps); the NLL term on the chosen
response (per-token mean, Pang et al. 2024's "RPO") keeps the chosen likelihood from falling. Reported beside
the loss, as means over the global batch's pairs: rewards_chosen = beta (logp_c - ref_c), rewards_rejected =
beta (logp_r - ref_r), reward_margin = their difference, reward_accuracy = share of pairs with
rewards_chosen > rewards_rejected (a tie, e.g. every pair at step 1 when policy == reference, counts 0).

Log-probabilities come from megatron's own loss path: GPTModel(..., labels=) returns the per-token cross
entropy of vocab_parallel_cross_entropy (each TP rank holds V/tp logits; only per-token maxima and sums cross
the TP group, the vocabulary is never gathered), so logp = -sum(ce x response mask). Only the last pipeline
stage computes it; megatron calls the loss function there only.

Layout (rows_per_sample 2: train.trainer passes megatron micro-batches of 2 x micro_batch_size sequences): a micro-batch
of m pairs arrives as [m, 2, S] tensors (chosen, rejected) and is flattened to rows c0, r0, c1, r1, ... so the
two responses of a pair always share a micro-batch. Context parallelism gives each CP rank 2 of the 2 x cp
sequence chunks; its partial sums s_k are all-reduced so every CP rank sees the whole S = sum_k s_k, and the
loss is built on s_k + (S - s_k).detach(): the value is f(S) on every CP rank, the gradient on rank k is
f'(S) ds_k, and megatron's sum of gradients over the CP group (plus ring attention's own backward) gives
exactly f'(S) dS. megatron's loss contract is (loss, count, report): the count is the pairs, returned by CP
rank 0 only (finalize_model_grads sums counts over DP x CP and divides the gradients by it), and the report
sums come from CP rank 0 only as well, so the global mean is over pairs, whatever the layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.utils import get_batch_on_this_cp_rank

from data.preference import build_preference_datasets, pairs_source
from recipes.stages import DPO_METRICS as METRICS
from train.distributed import to_model_device
from train.dpo_reference import attach_reference
from train.objectives.base import LOSS_REPORT, METRICS_REPORT, Objective

REFERENCE_REPORT = "reference"  # the reference pass: rows of (pair index, logp_chosen, logp_rejected)
SEQUENCE_FIELDS = ("tokens", "labels", "loss_mask", "position_ids")


@dataclass(frozen=True)
class DPOSettings:
    beta: float = 0.1
    label_smoothing: float = 0.0
    nll_weight: float = 0.0

    @classmethod
    def of(cls, stage) -> "DPOSettings":
        return cls(stage.dpo_beta, stage.dpo_label_smoothing, stage.dpo_nll_weight)


def pair_losses(settings: DPOSettings, logp: torch.Tensor, reference: torch.Tensor, chosen_tokens: torch.Tensor):
    """(loss per pair, {metric: value per pair}) from [pairs, 2] policy and reference log-probs (chosen first)."""
    rewards = settings.beta * (logp - reference)
    margin = rewards[:, 0] - rewards[:, 1]
    eps = settings.label_smoothing
    loss = -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    if settings.nll_weight:
        loss = loss - settings.nll_weight * logp[:, 0] / chosen_tokens.clamp(min=1)
    metrics = {"rewards_chosen": rewards[:, 0], "rewards_rejected": rewards[:, 1],
               "reward_accuracy": (margin > 0).to(margin.dtype), "reward_margin": margin}
    return loss, metrics


def sequence_logps(per_token_loss: torch.Tensor, loss_mask: torch.Tensor):
    """([rows] summed response log-probs, [rows] response tokens) over the whole sequence, float64.

    Under CP the value is the all-reduced sum, the gradient flows through this rank's part (module docstring).
    """
    mask = loss_mask.reshape(per_token_loss.shape).to(torch.float64)
    local = -(per_token_loss.to(torch.float64) * mask).sum(dim=1)
    tokens = mask.sum(dim=1)
    if parallel_state.get_context_parallel_world_size() == 1:
        return local, tokens
    totals = torch.stack([local.detach(), tokens])
    torch.distributed.all_reduce(totals, group=parallel_state.get_context_parallel_group())
    return local + (totals[0] - local.detach()), totals[1]


def _reports_here() -> float:
    """1 on the CP rank that reports counts and sums, 0 on its CP peers (they hold the same numbers)."""
    return 1.0 if parallel_state.get_context_parallel_rank() == 0 else 0.0


def loss_func(settings: DPOSettings, loss_mask: torch.Tensor, reference: torch.Tensor, per_token_loss):
    """megatron's 3-tuple contract for one micro-batch of pairs: (loss sum, pairs, report sums)."""
    logp, tokens = sequence_logps(per_token_loss, loss_mask)
    pairs = logp.numel() // 2
    losses, metrics = pair_losses(settings, logp.view(pairs, 2), reference.to(logp).view(pairs, 2),
                                  tokens.view(pairs, 2)[:, 0])
    here = _reports_here()
    loss_sum = losses.sum().float()
    count = torch.tensor(int(pairs * here), dtype=torch.int, device=loss_sum.device)
    report = {
        LOSS_REPORT: torch.stack([loss_sum.detach(), torch.tensor(float(pairs), device=loss_sum.device)]) * here,
        METRICS_REPORT: torch.stack([metrics[name].detach().sum().float() for name in METRICS]) * here,
    }
    return loss_sum, count, report


def reference_func(pair_index: torch.Tensor, loss_mask: torch.Tensor, per_token_loss):
    """The reference pass: report each pair's (index, logp_c, logp_r); nothing to learn (forward only)."""
    logp, _ = sequence_logps(per_token_loss, loss_mask)
    rows = torch.cat([pair_index.to(logp).view(-1, 1), logp.detach().view(-1, 2)], dim=1)
    zero = per_token_loss.sum() * 0.0
    return zero, torch.tensor(0, dtype=torch.int, device=zero.device), {REFERENCE_REPORT: rows}


def rows_of(batch: dict) -> dict:
    """[m, 2, S] pair tensors -> [2m, S] rows c0, r0, c1, r1, ... (the sequence fields only)."""
    return {key: batch[key].reshape(-1, batch[key].shape[-1]) for key in SEQUENCE_FIELDS}


def forward_step(settings: DPOSettings, data_iterator: Iterator[dict], model, reference_pass: bool = False):
    """One micro-batch of pairs through a model chunk; the loss function for the last stage."""
    batch = to_model_device(dict(next(data_iterator)), model)
    rows = get_batch_on_this_cp_rank(rows_of(batch))
    per_token_loss = model(rows["tokens"], rows["position_ids"], None, labels=rows["labels"])
    if reference_pass:
        return per_token_loss, partial(reference_func, batch["pair"], rows["loss_mask"])
    return per_token_loss, partial(loss_func, settings, rows["loss_mask"], batch["ref_logps"])


class DPO(Objective):
    """dpo: {prompt, chosen, rejected} JSONL pairs (data.preference); the reference pass before step 1."""

    def __init__(self, recipe, spec):
        super().__init__(recipe, spec)
        self.settings = DPOSettings.of(recipe.stage)

    def check_sources(self) -> None:
        """The JSONL path."""
        pairs_source(self.recipe.data)

    def build_datasets(self, **sizes):
        return build_preference_datasets(self.recipe.data, **sizes)

    def forward_step(self, data_iterator: Iterator[dict], model):
        return forward_step(self.settings, data_iterator, model)

    def reference_step(self, data_iterator: Iterator[dict], model):
        """The reference pass's forward step (train.dpo_reference)."""
        return forward_step(self.settings, data_iterator, model, reference_pass=True)

    def prepare(self, trainer, run_dir: Path, trained: bool, train_ds) -> None:
        """The frozen starting policy's log-probs of every pair, attached to the pairs (train.dpo_reference)."""
        attach_reference(trainer, self.recipe, run_dir, trained, train_ds)
