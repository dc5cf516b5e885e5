"""Compose a recipe with Hydra's Compose API from command-line style overrides: launch/pretrain.py, launch/convert.py,
deploy/k8s.py, the tests and bench do; launch/plan.py composes the same tree (recipes/config.yaml) through
@hydra.main. Either way the typed Recipe comes from build_recipe / to_recipe here."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from data.config import checks_deferred
from recipes import schema
from recipes.validate import validate

CONFIG_DIR = str(Path(__file__).resolve().parent)


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """Hydra composition of recipes/config.yaml with command-line style overrides."""
    schema.register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def build_recipe(cfg: DictConfig) -> schema.Recipe:
    """Typed Recipe object (interpolations resolved), not yet validated: bad data settings do not raise here,
    recipes.validate reports them with every other broken rule."""
    with checks_deferred():
        return OmegaConf.to_object(cfg)


def to_recipe(cfg: DictConfig, world_size: Optional[int] = None) -> schema.Recipe:
    """Typed Recipe object (interpolations resolved), checked by recipes.validate.

    `world_size` adds the rules that need it (world % (tp x pp x cp), global batch % (micro x dp), ...): the
    training loop passes torch.distributed's world size, the planner the recipe's run.nodes x run.gpus_per_node.
    Raises recipes.validate.RecipeError listing every broken rule.
    """
    return validate(build_recipe(cfg), world_size)
