"""Pretraining entry: `torchrun --nproc_per_node=N launch/pretrain.py +recipe=SIZE [stage=...] [overrides]`.

A Hydra application (recipes/config.yaml): every rank composes the same config, turns it into the typed Recipe and
hands it to train.loop.run, with the evaluation tasks train.eval_tasks asks for (evaluation.during_training: built
here, the layer above train/). A recipe, data or checkpoint mistake ends the run with one message (train.errors).
Hydra's own flags work as usual, without torchrun (one process):
    torchrun --nproc_per_node=2 launch/pretrain.py +recipe=tiny
    torchrun --nproc_per_node=8 launch/pretrain.py +recipe=7b stage=repo train.train_iters=1000
    python launch/pretrain.py +recipe=tiny --cfg job         # the composed recipe (--cfg all: with hydra's node)
    python launch/pretrain.py --help                          # groups (recipe, stage) and every option
    python launch/pretrain.py -m +recipe=tiny train.seed=1,2  # a sweep: run.dir/0, run.dir/1, one after another
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from recipes import schema
from recipes.compose import app_config, build_recipe
from train.errors import run_hydra_app, user_errors_reported


@hydra.main(config_path="../recipes", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    with user_errors_reported(extra=(ValueError,)):  # schema fields raise ValueError when they are built
        cfg = app_config(cfg)
        recipe = build_recipe(cfg)  # data rules are reported by the validator with the others
    from evaluation.during_training import task_evaluations
    from evaluation.sandbox import SandboxUnavailable
    from train.distributed import set_launch_environment
    from train.loop import run

    with user_errors_reported(extra=(ValueError, SandboxUnavailable)):  # a task name, its data, the sandbox
        evaluations = task_evaluations(recipe)  # train.eval_tasks: decoded by the live model at its cadence
    set_launch_environment(recipe)  # CUDA_DEVICE_MAX_CONNECTIONS before CUDA initialises
    with user_errors_reported():
        run(recipe, OmegaConf.to_container(cfg, resolve=True), evaluations)


if __name__ == "__main__":
    schema.register()
    run_hydra_app(main)
