"""Plan a recipe before launching it: layout, parameters per rank, peak memory per GPU, FLOPs, fit.

    python launch/plan.py +recipe=7b                      # file stage, text report
    python launch/plan.py +recipe=32b stage=repo plan.format=json
    python launch/plan.py +recipe=7b parallel.tp=4 run.nodes=2 plan.meta_build=false

The recipe is composed exactly as launch/pretrain.py composes it (same Hydra tree, same overrides) and checked
by recipes.validate on its own world size (run.nodes x run.gpus_per_node); `plan.*` is a schema node that only
this entry reads. The memory model is documented in docs/memory-model.md. Exit status 1 when it does not fit, 2
with one `error:` line when the recipe breaks a rule. A Hydra application like launch/pretrain.py (--cfg job,
--help, --info, -m: `python launch/plan.py -m +recipe=7b parallel.tp=2,4` plans each point). A plan writes
nothing (recipes/config.yaml: no Hydra log or output directory); a sweep leaves Hydra's multirun.yaml in run.dir.
The RoPE base printed is the one training would use: checkpoint.load's recorded base when that checkpoint
exists here and the stage keeps it.
"""
import sys

import hydra
from omegaconf import DictConfig

from recipes import schema
from train.errors import run_hydra_app, user_errors_reported


def _checkpoint_rope_base(load):
    """The RoPE base the run's checkpoint.load records, when it names a checkpoint here (else the plan states the
    stage's fresh-init base)."""
    if not load:
        return None
    from train.checkpoint import CheckpointError, recorded_rope_base, resolve_checkpoint

    try:
        return recorded_rope_base(resolve_checkpoint(load))
    except CheckpointError:
        return None


@hydra.main(config_path="../recipes", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from recipes.compose import to_recipe
    from recipes.planner import make_plan, render

    with user_errors_reported():
        recipe = to_recipe(cfg)
        plan = make_plan(recipe, recorded_rope_base=_checkpoint_rope_base(recipe.checkpoint.load))
    if recipe.plan.meta_build:
        from train.meta_count import meta_parameters_per_stage

        plan.meta_params_per_rank = meta_parameters_per_stage(recipe, plan.layout.world_size)
    print(render(plan, recipe.plan.format))
    if not plan.fits:
        sys.exit(1)


if __name__ == "__main__":
    schema.register()
    run_hydra_app(main)
