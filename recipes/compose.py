"""Compose a recipe outside @hydra.main (tests, the planner, tools) exactly as the entry points do."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from recipes import schema

CONFIG_DIR = str(Path(__file__).resolve().parent)


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """Hydra composition of recipes/config.yaml with command-line style overrides."""
    schema.register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def to_recipe(cfg: DictConfig) -> schema.Recipe:
    """Typed Recipe object (interpolations resolved)."""
    return OmegaConf.to_object(cfg)
