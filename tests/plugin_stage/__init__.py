"""A stage from outside the repository, added as a user would: a token-weighted next-token objective.

`weighted_lm` trains next-token prediction on the pretraining blend with every token's cross entropy scaled by
WEIGHT, and reports the unweighted per-token loss beside it as `unweighted_loss`. Everything it takes is here:
this module (imported through `stage.plugin=tests.plugin_stage`: it registers the StageSpec, whose objective is
the class below) and its YAMLs under conf/ (stage/weighted_lm.yaml, layout/tiny/weighted_lm.yaml), found through
`hydra.searchpath=[file://.../conf]`. tests/test_stage_plugin.py trains it through launch/pretrain.py.
"""
from __future__ import annotations

from functools import partial

import torch

from recipes.stages import StageSpec, register_stage
from train.distributed import to_model_device
from train.objectives.base import LOSS_REPORT, METRICS_REPORT
from train.objectives.lm import NextToken, split_for_cp_rank

WEIGHT = 0.25  # a power of two: the logged loss is exactly WEIGHT x unweighted_loss


def weighted_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(WEIGHT x summed token loss, tokens, reports): a per-token mean like the built-in stages, scaled."""
    mask = loss_mask.float()
    plain = (per_token_loss.float().reshape(mask.shape) * mask).sum()
    tokens = mask.sum()
    reports = {LOSS_REPORT: torch.stack([WEIGHT * plain.detach(), tokens]), METRICS_REPORT: plain.detach().view(1)}
    return WEIGHT * plain, tokens.to(torch.int), reports


class WeightedNextToken(NextToken):
    """The built-in next-token data and sources, another loss."""

    def forward_step(self, data_iterator, model):
        batch = split_for_cp_rank(to_model_device(dict(next(data_iterator)), model))
        per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        return per_token_loss, partial(weighted_loss, batch["loss_mask"])


register_stage(StageSpec("weighted_lm", f"{__name__}:WeightedNextToken", metrics=("unweighted_loss",),
                         plan_note=f"weighted_lm: every token's loss x {WEIGHT}"))
