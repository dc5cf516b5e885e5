"""A stage from outside the repository trains through launch/pretrain.py with no file of the repository edited.

tests/plugin_stage is that stage, `weighted_lm`: one module (its StageSpec and its objective, every token's loss
x 0.25, the unweighted loss reported as a metric) and its YAMLs, named on the command line by `stage.plugin` and
Hydra's search path. In process: without the plugin the stage is refused by the validator (naming
stage.plugin); with it the recipe validates and the planner and the W&B dashboard pick up its note and panel.
End to end, with the plugin's directory on PYTHONPATH as a user would put it (CI runs without PYTHONPATH, the
project pip-installed, and `tests` is no installed package): 2 ranks (TP2), 3 steps and one validation on real
stdlib code. The logged loss must be exactly 0.25 x the logged unweighted_loss at every step and in validation (0.25
is a power of two; an objective that ignored the weight, as the built-in next-token one does, logs a ratio of 1),
and the unweighted loss at step 1 must be a fresh model's ~ln(vocab) = 11.93, so the loss the run optimised is the
weighted one. Cost: one 2-rank run of 3 steps, as each case of tests/test_stages_e2e.py.
"""
from __future__ import annotations

import json
import math
import sys

import pytest

from recipes.compose import compose_config, to_recipe
from recipes.stages import STAGE_SPECS
from recipes.validate import RecipeError
from tests.run_helpers import FAST, REPO, prepare_code_dataset, run_pretrain

CONF = REPO / "tests" / "plugin_stage" / "conf"
STAGE = ["+recipe=tiny", "stage=weighted_lm", f"hydra.searchpath=[file://{CONF}]"]
STEPS = 3


@pytest.fixture
def unregister():
    """Leave the registry as the other tests expect it."""
    yield
    STAGE_SPECS.pop("weighted_lm", None)
    sys.modules.pop("tests.plugin_stage", None)


def test_plugin_stage_is_registered_by_its_module_only(unregister):
    from deploy.wandb_dashboard import sections
    from recipes.planner import make_plan

    with pytest.raises(RecipeError, match=r"\[enum\] stage.name='weighted_lm' is not one of .* stage.plugin=MODULE"):
        to_recipe(compose_config([*STAGE, "stage.plugin=null"]))
    assert "weighted_lm" not in STAGE_SPECS and "weighted_lm" not in sections()
    recipe = to_recipe(compose_config(STAGE))
    assert (recipe.stage.name, recipe.stage.plugin, recipe.parallel.tp) == ("weighted_lm", "tests.plugin_stage", 2)
    assert make_plan(recipe).notes == ["weighted_lm: every token's loss x 0.25"]
    assert [p.keys for p in sections()["weighted_lm"]] == [("unweighted_loss", "val_unweighted_loss")]


def test_plugin_objective_trains_through_pretrain(tmp_path):
    code = prepare_code_dataset(tmp_path, packages=("json", "email"))
    run_dir = tmp_path / "run"
    completed = run_pretrain(2, [
        *STAGE, *FAST, f"data.sources=[{{name: code, prefix: {code}, weight: 1.0}}]",
        f"train.train_iters={STEPS}", f"train.eval_interval={STEPS}", "train.eval_iters=1",
        "checkpoint.save_interval=0", f"run.dir={run_dir}", "logging.wandb=false", "logging.plots=false"],
        PYTHONPATH=str(REPO))  # as a user puts their plugin's directory on the path: here `tests` lives in REPO
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1)) and [r["step"] for r in valid] == [STEPS]
    for record in train:
        assert record["loss"] == 0.25 * record["unweighted_loss"], record
    assert valid[0]["val_loss"] == 0.25 * valid[0]["val_unweighted_loss"], valid[0]
    assert abs(train[0]["unweighted_loss"] - math.log(151_936)) < 0.3, train[0]  # a fresh model: ~uniform
    assert train[-1]["unweighted_loss"] < train[0]["unweighted_loss"], train
