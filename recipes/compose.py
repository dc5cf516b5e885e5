"""Compose a recipe as the entry points do: `compose_config` outside @hydra.main (tests, tools), `app_config`
inside it (launch/pretrain.py, launch/plan.py), then `build_recipe` / `to_recipe` for the typed Recipe."""
from __future__ import annotations

import os
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


def app_config(cfg: DictConfig) -> DictConfig:
    """The config @hydra.main hands an entry point, for this job. Under --multirun each point of the sweep gets
    its own run directory, Hydra's job directory (config.yaml: run.dir/<job number>), so points neither share
    nor resume each other's checkpoints. A sweep inside torchrun is refused: every rank would run the whole
    sweep and its points would meet in one process group."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    job = HydraConfig.get()
    if job.mode == RunMode.MULTIRUN:
        if "TORCHELASTIC_RUN_ID" in os.environ:
            raise ValueError("-m/--multirun inside torchrun: launch one torchrun per point of the sweep instead "
                             "(a sweep runs its points one after another in one process)")
        cfg.run.dir = job.runtime.output_dir
    return cfg


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
