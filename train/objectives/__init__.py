"""Training objectives, the train-side half of a stage: recipes.stages names one per stage ("module:Class")."""
from __future__ import annotations

import importlib

from recipes.schema import Recipe
from recipes.stages import stage_spec
from train.objectives.base import Objective


def objective_for(recipe: Recipe) -> Objective:
    """The objective of the recipe's stage (a plugin's stage imports its module first: recipes.stages)."""
    spec = stage_spec(recipe.stage)
    module, _, name = spec.objective.partition(":")
    return getattr(importlib.import_module(module), name)(recipe, spec)
