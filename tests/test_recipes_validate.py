"""Each validator rule, broken on a shipped recipe: the error names the rule, the values and the fix."""
from __future__ import annotations

import ast
import inspect

import pytest

from model.families import get_shape
from recipes.compose import compose_config, to_recipe
import data.config as data_config_module
import recipes.stages as stages_module
import recipes.validate as validate_module
from recipes.validate import RecipeError, check, valid_tp_sizes, validate

# (id, overrides, world size or None, rule, substrings the message must contain)
BROKEN = [
    ("unknown-key", ["+recipe=7b", "+train.seq_lenght=4096"], None, "unknown-key",
     ["train.seq_lenght is not in the recipe schema", "did you mean train.seq_length?"]),
    ("enum-dtype", ["+recipe=7b", "precision.dtype=fp16"], None, "enum",
     ["precision.dtype='fp16' is not one of ('bf16', 'fp32')"]),
    ("enum-impl", ["+recipe=7b", "model.transformer_impl=te"], None, "enum",
     ["model.transformer_impl='te' is not one of ('auto', 'local', 'transformer_engine')"]),
    ("enum-fp8", ["+recipe=7b", "stage=repo", "precision.fp8=e5m2"], None, "enum", ["precision.fp8='e5m2'"]),
    ("enum-fp8-recipe", ["+recipe=7b", "stage=repo", "precision.fp8_recipe=mx"], None, "enum",
     ["precision.fp8_recipe='mx' is not one of ('delayed', 'tensorwise', 'blockwise', 'mxfp8')"]),
    ("enum-amax", ["+recipe=7b", "precision.fp8_amax_compute_algo=mean"], None, "enum",
     ["precision.fp8_amax_compute_algo='mean'"]),
    ("enum-recompute", ["+recipe=7b", "train.recompute=fulll"], None, "enum", ["train.recompute='fulll'"]),
    ("enum-decay", ["+recipe=7b", "optimizer.decay_style=wsd"], None, "enum",
     ["optimizer.decay_style='wsd' is not one of ('cosine', 'linear', 'constant')"]),
    ("enum-stage", ["+recipe=7b", "stage.name=pretrain"], None, "enum",
     ["stage.name='pretrain' is not one of ('file', 'repo', 'long', 'sft', 'dpo')"]),
    ("stage-plugin", ["+recipe=7b", "stage.plugin=no_such_package.stage"], None, "stage-plugin",
     ["stage.plugin='no_such_package.stage' does not import"]),
    ("enum-plan", ["+recipe=7b", "plan.format=yaml"], None, "enum", ["plan.format='yaml'"]),
    ("positive", ["+recipe=7b", "parallel.cp=0"], None, "positive", ["parallel.cp=0 must be >= 1"]),
    ("shape", ["+recipe=7b", "model.shape=13b"], None, "shape", ["unknown model shape '13b'"]),
    ("tp-heads", ["+recipe=7b", "parallel.tp=3"], None, "tp-heads",
     ["parallel.tp=3 does not divide num_attention_heads=28 of shape 7b; use tp in {1, 2, 4}"]),
    ("tp-kv-groups", ["+recipe=7b", "parallel.tp=7"], None, "tp-kv-groups",
     ["parallel.tp=7 neither divides nor is a multiple of num_query_groups=4 of shape 7b; use tp in {1, 2, 4}"]),
    ("tp-qkv-rows", ["+recipe=7b", "parallel.tp=28"], None, "tp-qkv-rows",
     ["parallel.tp=28 does not divide the fused QKV rows (heads + 2 x groups) x head_dim = (28 + 2 x 4) x 128 = 4608"]),
    ("tp-ffn", ["+recipe=7b", "model.ffn_hidden_size=18945"], None, "tp-ffn",
     ["parallel.tp=2 does not divide ffn_hidden_size=18945"]),
    ("tp-vocab", ["+recipe=7b", "model.vocab_size=152065"], None, "tp-vocab",
     ["parallel.tp=2 does not divide the vocab rows=152065"]),
    ("sp-needs-tp", ["+recipe=0.5b", "parallel.sp=true"], None, "sp-needs-tp",
     ["parallel.sp=true needs parallel.tp > 1"]),
    ("pp-layers", ["+recipe=7b", "parallel.pp=3"], None, "pp-layers",
     ["pp x parallel.vpp = 3 x 1 = 3 does not divide num_layers=28", "use pp in {1, 2, 4, 7, 14, 28}"]),
    ("pp-layers-vpp", ["+recipe=32b", "parallel.vpp=3"], None, "pp-layers",
     ["2 x 3 = 6 does not divide num_layers=64", "with pp=2 use vpp in {1, 2, 4, 8, 16, 32}"]),
    ("vpp-needs-pp", ["+recipe=7b", "parallel.vpp=2"], None, "vpp-needs-pp",
     ["parallel.vpp=2 needs parallel.pp > 1"]),
    ("pp2-vpp-p2p", ["+recipe=32b", "parallel.vpp=2", "parallel.batch_p2p_comm=true"], None, "pp2-vpp-p2p",
     ["wrong gradients", "set parallel.batch_p2p_comm=false"]),
    ("cp-sequence", ["+recipe=7b", "stage=repo", "train.seq_length=32764"], None, "cp-sequence",
     ["train.seq_length=32764 is not divisible by 2 x cp = 8"]),
    ("sp-sequence", ["+recipe=7b", "parallel.tp=4", "train.seq_length=8194"], None, "sp-sequence",
     ["per-CP-rank length seq_length / cp = 8194 / 1 = 8194 must be divisible by tp=4"]),
    ("fp8-sequence-sp", ["+recipe=7b", "stage=repo", "train.seq_length=32832"], None, "fp8-sequence",
     ["per-TP-rank (SP) sequence length divisible by 16; seq_length=32832 / 8 = 4104",
      "use a seq_length multiple of 128"]),
    ("fp8-sequence-mxfp8", ["+recipe=0.5b", "stage=repo", "run.gpu=b200", "precision.fp8_recipe=mxfp8",
                            "train.seq_length=32800"], None, "fp8-sequence",
     ["FP8 (mxfp8) needs the per-CP-rank sequence length divisible by 32; seq_length=32800 / 2 = 16400"]),
    ("fp8-impl", ["+recipe=0.5b", "stage=repo", "model.transformer_impl=auto"], None, "fp8-impl",
     ["runs only in Transformer Engine but model.transformer_impl=auto",
      "set model.transformer_impl=transformer_engine"]),
    ("fp8-dtype", ["+recipe=0.5b", "stage=repo", "precision.dtype=fp32"], None, "fp8-dtype",
     ["precision.fp8 needs precision.dtype=bf16 (got fp32)"]),
    ("fp8-gpu-mxfp8", ["+recipe=0.5b", "stage=repo", "precision.fp8_recipe=mxfp8"], None, "fp8-gpu",
     ["precision.fp8_recipe=mxfp8 needs compute capability >= 10.0 but run.gpu=h100 is 9.0",
      "use precision.fp8_recipe in {delayed, tensorwise, blockwise}"]),
    ("fp8-gpu-a100", ["+recipe=0.5b", "stage=repo", "run.gpu=a100"], None, "fp8-gpu",
     ["run.gpu=a100 is 8.0; set precision.fp8=null"]),
    ("fp8-param", ["+recipe=7b", "precision.fp8_param=true"], None, "fp8-param",
     ["precision.fp8_param=true needs precision.fp8"]),
    ("recompute-layers", ["+recipe=7b", "train.recompute=full", "train.recompute_num_layers=3"], None,
     "recompute-layers", ["recompute_num_layers=3 does not divide the 28 layers", "use one of {1, 2, 4, 7, 14, 28}"]),
    ("positions", ["+recipe=7b", "stage=repo", "train.seq_length=65536"], None, "positions",
     ["train.seq_length=65536 exceeds the 32768 positions", "set model.yarn_factor=2"]),
    ("schedule", ["+recipe=7b", "optimizer.min_lr=1e-3"], None, "schedule",
     ["optimizer.min_lr=0.001 exceeds optimizer.lr=0.0003"]),
    ("gpu", ["+recipe=7b", "run.gpu=v100"], None, "gpu", ["run.gpu='v100' is not in recipes.gpus"]),
    ("fp8-cp-sequence", ["+recipe=3b", "stage=repo", "parallel.tp=16", "parallel.sp=false", "train.seq_length=32800"],
     None, "fp8-cp-sequence", ["lcm(16, 2 x tp x cp) = 64; seq_length=32800"]),
    ("distributed-optimizer", ["+recipe=7b", "stage=repo", "precision.fp8_param=true",
                               "parallel.distributed_optimizer=false"], None, "distributed-optimizer",
     ["precision.fp8_param=true needs parallel.distributed_optimizer=true"]),
    ("packing-cp", ["+recipe=7b", "stage=sft", "parallel.cp=2"], None, "packing-cp",
     ["needs parallel.cp=1 (got cp=2)", "data.packing=false"]),
    ("dpo", ["+recipe=7b", "stage=dpo", "stage.dpo_beta=0"], None, "dpo", ["stage.dpo_beta=0.0 must be > 0"]),
    ("data-sources", ["+recipe=tiny", "data.sources=[{name: a, prefix: x, weight: 1}, {name: b, weight: 0}]"],
     None, "data-sources",
     ["data.sources[1] (b): weight must be > 0, got 0"]),
    ("data-fim", ["+recipe=tiny", "data.fim_rate=1.5"], None, "data-fim", ["data.fim_rate must be in [0, 1], got 1.5"]),
    ("data-split", ["+recipe=tiny", "data.split=train"], None, "data-split", ["data.split must be 'train,valid,test'"]),
    ("data-loader", ["+recipe=tiny", "data.prefetch=0"], None, "data-loader", ["data.prefetch >= 1, got 2, 0"]),
    ("enum-data-loader", ["+recipe=tiny", "data.loader=tf"], None, "enum",
     ["data.loader must be one of ('torch', 'dali'), got 'tf'"]),
    ("eval-tasks-cadence", ["+recipe=tiny", "train.eval_tasks=[humaneval]", "train.eval_interval=0"], None,
     "eval-tasks", ["needs a cadence", "set train.eval_tasks_interval=N"]),
    ("eval-tasks-limit", ["+recipe=tiny", "train.eval_tasks=[humaneval]", "train.eval_tasks_limit=-1"], None,
     "eval-tasks", ["train.eval_tasks_limit=-1 must be >= 0"]),
    ("eval-tasks-cp", ["+recipe=tiny", "stage=repo", "train.eval_tasks=[humaneval]"], None, "eval-tasks",
     ["cannot decode with the live model at parallel.cp=2", "launch/evaluate.py --checkpoint"]),
    ("eval-tasks-fp8", ["+recipe=7b", "stage=repo", "train.eval_tasks=[humaneval]"], None, "eval-tasks",
     ["at precision.fp8=hybrid"]),
    ("positive-eval-tasks", ["+recipe=tiny", "train.eval_tasks=[humaneval]", "train.eval_tasks_interval=0"], None,
     "positive", ["train.eval_tasks_interval=0 must be >= 1"]),
    ("world-size", ["+recipe=7b", "stage=repo"], 12, "world-size",
     ["world size 12 is not a multiple of tp x pp x cp = 2 x 1 x 4 = 8", "(e.g. 16)"]),
    ("global-batch", ["+recipe=7b"], 24, "global-batch",
     ["train.global_batch_size=256 is not a multiple of micro_batch_size x dp = 1 x 12 = 12; use 252 or 264"]),
    ("vpp-microbatches", ["+recipe=32b", "parallel.pp=4", "parallel.vpp=2", "train.global_batch_size=258"], 32,
     "vpp-microbatches", ["= 258, to be a multiple of pp=4"]),
]


@pytest.mark.parametrize("overrides, world_size, rule, expected", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_rule_is_enforced_with_values_and_fix(overrides, world_size, rule, expected):
    with pytest.raises(RecipeError) as info:
        to_recipe(compose_config(overrides), world_size=world_size)
    assert rule in info.value.rules, str(info.value)
    message = next(str(v) for v in info.value.violations if v.rule == rule and all(e in str(v) for e in expected))
    assert message.startswith(f"[{rule}] ")


def validator_rules() -> set[str]:
    """Every rule name recipes.validate can report, read from the source: the first argument of each
    Violation(...) call, and the rule of each (rule, message) pair collected for it (the TP width rules in
    recipes/validate.py, the data rules in data/config.py's DataConfig.problems, each stage's rules in
    recipes/stages.py)."""
    rules, unread = set(), []
    for module in (validate_module, data_config_module, stages_module):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id == "Violation":
                first = node.args[0]
                if isinstance(first, ast.Constant):
                    rules.add(first.value)
                elif not (isinstance(first, ast.Name) and first.id == "rule"):  # `rule`: a collected pair's
                    unread.append(ast.unparse(first))
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "append" and node.args and \
                    isinstance(node.args[0], ast.Tuple) and isinstance(node.args[0].elts[0], ast.Constant):
                rules.add(node.args[0].elts[0].value)
    assert not unread, f"rule names this test cannot read: {unread}"
    return rules


# Rules whose breaking case needs more than overrides, with the test that breaks them.
BROKEN_ELSEWHERE = {
    "fp8-te-version": "tests/test_gpu_settings.py (an installed Transformer Engine version, patched)",
    "rope-base": "tests/test_rope_stages.py (the base a checkpoint records, against an explicit model.rope_base)",
}


def test_every_rule_has_a_breaking_case():
    rules = validator_rules()
    assert {"unknown-key", "tp-heads", "tp-vocab", "world-size", "vpp-microbatches"} <= rules  # the reader works
    assert set(BROKEN_ELSEWHERE) <= rules
    assert {b[3] for b in BROKEN} == rules - set(BROKEN_ELSEWHERE)


def test_tp_beyond_kv_heads_is_allowed():
    """megatron gathers QKV when tp > KV groups: 1.5B (2 KV heads) at TP4 is valid, 7B at TP28 is not (QKV rows)."""
    assert valid_tp_sizes(get_shape("1.5b")) == [1, 2, 4]
    assert valid_tp_sizes(get_shape("7b")) == [1, 2, 4]
    assert valid_tp_sizes(get_shape("14b")) == [1, 2, 4, 8]
    assert valid_tp_sizes(get_shape("0.5b")) == [1, 2]
    validate(to_recipe(compose_config(["+recipe=1.5b", "parallel.tp=4", "parallel.sp=true"])), 8)


def test_tied_embeddings_with_pipeline_are_allowed():
    """The 3B (tied) split over 4 stages, interleaved: megatron keeps the embedding's copy on the last stage."""
    recipe = to_recipe(compose_config(["+recipe=3b", "parallel.pp=4", "parallel.vpp=3", "train.global_batch_size=256"]))
    assert check(recipe, 8) == []


def test_pp2_vpp_with_unbatched_p2p_is_allowed():
    recipe = to_recipe(compose_config(["+recipe=32b", "parallel.vpp=2"]))
    assert recipe.parallel.batch_p2p_comm is False and check(recipe, 16) == []


def test_all_violations_are_reported_together():
    with pytest.raises(RecipeError) as info:
        to_recipe(compose_config(["+recipe=7b", "parallel.tp=3", "parallel.pp=3", "precision.dtype=fp16"]), 8)
    assert {"enum", "tp-heads", "pp-layers", "world-size"} <= set(info.value.rules)
    assert "recipe breaks" in str(info.value) and "[tp-heads]" in str(info.value)


def test_yarn_factor_extends_the_position_range():
    recipe = to_recipe(compose_config(["+recipe=7b", "stage=repo", "model.yarn_factor=4", "train.seq_length=131072",
                                       "parallel.cp=16", "run.nodes=4"]))
    assert check(recipe, 32) == []
