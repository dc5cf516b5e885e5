"""The recipe tree: every (size, stage) composes offline, passes the validator on its own world size, and
Hydra refuses a missing '+', unknown keys and badly typed values at compose time with its own message."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from recipes.compose import compose_config, to_recipe
from recipes.validate import RecipeError, validate
from recipes.world import recipe_world_size

SIZES = ("tiny", "0.5b", "1.5b", "3b", "7b", "14b", "32b")
RELEASED = SIZES[1:]
STAGES = ("file", "repo", "long", "sft", "dpo")
SEQ = {"file": 8192, "repo": 32768, "long": 131072, "sft": 8192, "dpo": 4096}
# The report's RoPE bases: 10,000 at stage 1, raised to 1e6 with the repo stage (and kept at 128K); SFT/DPO start
# from released weights (rope_theta 1e6): their value is a fresh init's, a loaded checkpoint keeps its own base.
ROPE_BASE = {"file": 10_000.0, "repo": 1_000_000.0, "long": 1_000_000.0, "sft": 1_000_000.0, "dpo": 1_000_000.0}
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("size", SIZES)
def test_every_recipe_composes_and_validates(size, stage):
    recipe = to_recipe(compose_config([f"+recipe={size}", f"stage={stage}"]))
    validate(recipe, recipe_world_size(recipe))
    assert recipe.model.shape == size and recipe.stage.name == stage
    assert recipe.run.name == f"{size}-{stage}"
    if size != "tiny":
        assert recipe.train.seq_length == SEQ[stage]
        assert recipe.run.gpu == "h100" and recipe.run.gpus_per_node == 8
        assert recipe.precision.dtype == "bf16"
        # FP8 exactly for the repo stage and its 128K continuation, and then through Transformer Engine
        assert (recipe.precision.fp8 is not None) == (stage in ("repo", "long"))
    assert recipe.model.rope_base is None  # auto: resolved against the checkpoint when the run starts
    assert (recipe.stage.rope_base, recipe.stage.rope_base_switch) == (ROPE_BASE[stage], stage in ("repo", "long"))
    assert recipe.model_shape().rope_theta == ROPE_BASE[stage]  # what a fresh init builds
    # YaRN x4 over the 32K positions exactly at stage=long (Qwen2.5-Coder's rope_scaling)
    yarn = recipe.yarn_scaling()
    assert (yarn.factor, yarn.original_max_position_embeddings) == (4.0, 32768) if stage == "long" else yarn is None


def test_tree_is_complete():
    """One recipe file per size and one tuned layout per size and stage; nothing stray."""
    assert sorted(p.stem for p in (RECIPES_DIR / "recipe").glob("*.yaml")) == sorted(SIZES)
    assert sorted(p.stem for p in (RECIPES_DIR / "stage").glob("*.yaml")) == sorted(STAGES)
    for size in SIZES:
        assert sorted(p.stem for p in (RECIPES_DIR / "layout" / size).glob("*.yaml")) == sorted(STAGES), size


def test_stage_switches_the_size_layout():
    file = to_recipe(compose_config(["+recipe=7b"]))
    repo = to_recipe(compose_config(["+recipe=7b", "stage=repo"]))
    assert (file.stage.name, file.parallel.cp, file.run.nodes) == ("file", 1, 1)
    assert (repo.stage.name, repo.parallel.cp, repo.run.nodes, repo.precision.fp8) == ("repo", 4, 2, "hybrid")
    assert repo.model.transformer_impl == "transformer_engine"


def test_command_line_overrides_win_over_layout_and_stage():
    recipe = to_recipe(compose_config(["+recipe=7b", "stage=repo", "parallel.tp=4", "train.seq_length=16384",
                                       "optimizer.lr=1e-5"]))
    assert (recipe.parallel.tp, recipe.train.seq_length, recipe.optimizer.lr) == (4, 16384, 1e-5)


def test_recipe_without_plus_fails_with_hydras_message():
    with pytest.raises(ConfigCompositionException, match=r"To append to your default list use \+recipe=32b"):
        compose_config(["recipe=32b"])


def test_unknown_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'parallel.tpp'"):
        compose_config(["+recipe=32b", "parallel.tpp=2"])


def test_appended_unknown_key_fails_in_to_recipe():
    """`+parallel.tpp=2` passes Hydra (struct is open for appends); the validator names the typo."""
    with pytest.raises(RecipeError, match=r"parallel.tpp is not in the recipe schema.*did you mean parallel.tp\?"):
        to_recipe(compose_config(["+recipe=32b", "+parallel.tpp=2"]))


def test_badly_typed_value_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match=r"Error merging override parallel.tp=two"):
        compose_config(["+recipe=32b", "parallel.tp=two"])


def test_unknown_size_and_stage_list_the_options():
    with pytest.raises(MissingConfigException, match=r"Could not find 'recipe/33b'"):
        compose_config(["+recipe=33b"])
    with pytest.raises(MissingConfigException, match=r"Could not find 'stage/pretrain'"):
        compose_config(["+recipe=7b", "stage=pretrain"])


def test_bad_enum_value_fails_in_to_recipe():
    with pytest.raises(RecipeError, match=r"train.recompute='fulll' is not one of \('none', 'selective', 'full'\)"):
        to_recipe(compose_config(["+recipe=7b", "train.recompute=fulll"]))


def test_world_size_rules_run_only_when_known():
    cfg = compose_config(["+recipe=7b", "train.global_batch_size=102"])
    to_recipe(cfg)  # no world size: 102 is fine
    with pytest.raises(RecipeError, match=r"\[global-batch\]"):
        to_recipe(cfg, world_size=8)


def test_layout_lines_are_commented():
    """Every tuned choice in a released layout carries a one-line reason (a '#' comment on its line)."""
    for size in RELEASED:
        for stage in STAGES:
            path = RECIPES_DIR / "layout" / size / f"{stage}.yaml"
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            assert lines[0].startswith("#"), f"{path} lacks a header comment"
            for line in lines:
                if not line.rstrip().endswith(":"):  # a value, not the opening of a mapping
                    assert "#" in line, f"{path}: '{line.strip()}' has no comment"
