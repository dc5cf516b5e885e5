"""The stage registry: what each training stage is, as facts that tools read without torch.

A stage has two halves. Its StageSpec (here, torch-free) says what the recipe tools need: rows per sample (the
planner's activations, the loop's token counts), whether it trains ChatML turns (the HF export's eos), the
metrics it logs beside the loss (W&B panels) and its own recipe rules (the validator). Its objective
(`objective`, "module:Class" of a train.objectives.base.Objective subclass, imported only by train/) says what
a sample is, how the datasets are built, the forward step and loss, and any pass before step 1 (DPO's
reference). The trainer, loop, data feed, planner, export and dashboard ask these two; none names a stage.

Adding a stage that reuses an objective (as `long`, the repo stage at 128K) is one StageSpec line below plus its
YAMLs (recipes/stage/NAME.yaml, recipes/layout/SIZE/NAME.yaml). A stage from outside this repository sets
`stage.plugin=package.module`: that module is imported before the registry is asked and calls register_stage
with its spec, whose `objective` may name a class in the same module (docs/stages.md).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

Rule = tuple[str, str]  # (rule name, message naming the values and the fix), as recipes.validate reports them
Panel = tuple[str, tuple[str, ...]]  # (W&B panel title, metric keys)


@dataclass(frozen=True)
class StageSpec:
    """One stage's torch-free facts (module docstring)."""

    name: str
    objective: str
    """"module:Class" of the train-side objective (train.objectives)."""
    rows_per_sample: int = 1
    """Sequences in one sample: a micro-batch of m samples runs m x rows sequences through the model."""
    chat: bool = False
    """Trains ChatML turns ending in <|im_end|>: the HF export stops generation on it, as the Instruct models do."""
    packs: bool = False
    """data.packing applies: several conversations share a row (thd attention; rule packing-cp)."""
    metrics: tuple[str, ...] = ()
    """Numbers logged beside the loss, in the order the objective reports them; validation logs them val_ prefixed."""
    dashboard: Optional[tuple[str, tuple[Panel, ...]]] = None
    """(W&B section, panels) for `metrics`; None: one panel per metric with its val_ twin, in a section named
    after the stage."""
    plan_note: str = ""
    """A line launch/plan.py prints for this stage."""
    rules: Optional[Callable[[Any], list[Rule]]] = None
    """The stage's own rules on a recipes.schema.Recipe, run by recipes.validate with every other rule."""

    def panels(self) -> Optional[tuple[str, tuple[Panel, ...]]]:
        """(W&B section, panels) of the stage's metrics; None for a stage without metrics."""
        if self.dashboard is not None or not self.metrics:
            return self.dashboard
        return self.name, tuple((name, (name, f"val_{name}")) for name in self.metrics)


STAGE_SPECS: dict[str, StageSpec] = {}


def register_stage(spec: StageSpec) -> StageSpec:
    """Add `spec` to the registry (a plugin module calls this at import); a second spec of a name replaces it."""
    STAGE_SPECS[spec.name] = spec
    return spec


class UnknownStage(ValueError):
    """stage.name is not registered."""


class PluginImportError(UnknownStage):
    """stage.plugin does not import."""


def stage_spec(stage) -> StageSpec:
    """The spec of a recipe's stage (recipes.schema.StageConfig), importing `stage.plugin` first when it names one.
    (recipes.schema imports this module for the stage list, so this one does not import it back.)"""
    if stage.plugin:
        try:
            importlib.import_module(stage.plugin)
        except ImportError as error:
            raise PluginImportError(f"stage.plugin={stage.plugin!r} does not import ({error}); name a module on "
                               "PYTHONPATH that calls recipes.stages.register_stage") from None
    if stage.name not in STAGE_SPECS:
        raise UnknownStage(f"stage.name={stage.name!r} is not one of {tuple(STAGE_SPECS)}; use one of them, or "
                           "stage.plugin=MODULE for a stage that module registers")
    return STAGE_SPECS[stage.name]


def _dpo_rules(recipe) -> list[Rule]:
    """stage.dpo_beta > 0; 0 <= label smoothing < 0.5 (at 0.5 both labels weigh the same and nothing is learnt);
    nll weight >= 0."""
    stage, out = recipe.stage, []
    if not stage.dpo_beta > 0:
        out.append(("dpo", f"stage.dpo_beta={stage.dpo_beta} must be > 0 (published DPO recipes use 0.1)"))
    if not 0 <= stage.dpo_label_smoothing < 0.5:
        out.append(("dpo", f"stage.dpo_label_smoothing={stage.dpo_label_smoothing} must be in [0, 0.5); "
                    "0 = plain DPO, e.g. 0.1 for conservative DPO"))
    if not stage.dpo_nll_weight >= 0:
        out.append(("dpo", f"stage.dpo_nll_weight={stage.dpo_nll_weight} must be >= 0 (0 = no NLL term)"))
    return out


DPO_METRICS = ("rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin")
for _spec in (
    StageSpec("file", "train.objectives.lm:NextToken"),
    StageSpec("repo", "train.objectives.lm:NextToken"),
    StageSpec("long", "train.objectives.lm:NextToken"),  # repo at 131,072 tokens, YaRN x4 (recipes/stage/long.yaml)
    StageSpec("sft", "train.objectives.lm:ChatSFT", chat=True, packs=True),
    StageSpec("dpo", "train.objectives.dpo:DPO", rows_per_sample=2, chat=True, metrics=DPO_METRICS,
              dashboard=("Preference (DPO)", (
                  ("DPO rewards", ("rewards_chosen", "rewards_rejected", "reward_margin")),
                  ("DPO validation rewards", ("val_rewards_chosen", "val_rewards_rejected", "val_reward_margin")),
                  ("DPO reward accuracy", ("reward_accuracy", "val_reward_accuracy")))),
              plan_note="DPO: each micro-batch item is a (chosen, rejected) pair; before step 1 a forward-only "
                        "pass over every pair computes the reference log-probs (~1/3 of one epoch's compute, "
                        "no GPU memory beyond a step's)",
              rules=_dpo_rules),
):
    register_stage(_spec)
BUILTIN_STAGES = tuple(STAGE_SPECS)
"""The stages of this repository, in training order; recipes/stage/NAME.yaml and recipes/layout/SIZE/NAME.yaml
exist for each."""
