"""Pretraining entry: `torchrun --nproc_per_node=N launch/pretrain.py +recipe=SIZE [stage=...] [overrides]`.

Every rank composes the same Hydra config (recipes/), turns it into the typed Recipe and hands it to
train.loop.run. A recipe, data or checkpoint mistake ends the run with one message (train.errors). Examples:
    torchrun --nproc_per_node=2 launch/pretrain.py +recipe=tiny
    torchrun --nproc_per_node=8 launch/pretrain.py +recipe=7b stage=repo train.train_iters=1000
"""
import sys

from omegaconf import OmegaConf

from recipes.compose import build_recipe, compose_config
from train.errors import user_errors_reported


def main(argv) -> None:
    with user_errors_reported(extra=(ValueError,)):  # schema fields raise ValueError when they are built
        cfg = compose_config(argv)
        recipe = build_recipe(cfg)  # data rules are reported by the validator with the others
    from train.distributed import set_launch_environment
    from train.loop import run

    set_launch_environment(recipe)  # CUDA_DEVICE_MAX_CONNECTIONS before CUDA initialises
    with user_errors_reported():
        run(recipe, OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main(sys.argv[1:])
