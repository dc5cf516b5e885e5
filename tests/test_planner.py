"""The planner: per-rank parameters equal megatron's own meta-device build, every shipped recipe fits an 80 GB H100
with a stated margin, the memory model behaves as documented, and launch/plan.py prints one JSON object."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.accounting import training_flops_per_token
from model.families import get_shape
from recipes.compose import compose_config, to_recipe
from recipes.planner import GIB, inflight, make_plan
from recipes.world import layout_of

SIZES = ("tiny", "0.5b", "1.5b", "3b", "7b", "14b", "32b")
STAGES = ("file", "repo", "long", "sft", "dpo")
SHIPPED = [(size, stage) for size in SIZES for stage in STAGES]
# Layouts no recipe ships, chosen to stress the sharding formula.
VARIANTS = [
    ["+recipe=32b", "parallel.pp=4", "parallel.vpp=2", "run.nodes=4"],
    ["+recipe=3b", "parallel.tp=4", "parallel.pp=4", "parallel.vpp=3", "run.nodes=2"],
    ["+recipe=1.5b", "parallel.tp=4", "parallel.sp=true", "parallel.pp=2"],
    ["+recipe=7b", "stage=repo", "parallel.pp=2", "parallel.vpp=2", "parallel.cp=2", "run.nodes=1"],
    ["+recipe=0.5b", "parallel.tp=2", "parallel.pp=4", "parallel.vpp=3"],
    ["+recipe=14b", "parallel.tp=8", "parallel.pp=3", "run.nodes=3"],
]
HEADROOM = 0.10  # every shipped recipe's estimate stays >= 10 % below the card's memory
H100_GIB = 79.2
REPO = Path(__file__).resolve().parents[1]
# The meta builds need their own fake process group, and other test modules leave a 1-rank gloo world up in this
# process: count in one fresh interpreter for all layouts (~5 s of imports, well under a second per build).
_META_WORKER = """
import json, sys, warnings
warnings.filterwarnings("ignore")
from recipes.compose import compose_config, to_recipe
from train.meta_count import meta_parameters_per_stage
from recipes.world import recipe_world_size
counts = {}
for key, overrides in json.loads(sys.argv[1]).items():
    recipe = to_recipe(compose_config(overrides))
    counts[key] = meta_parameters_per_stage(recipe, recipe_world_size(recipe))
print(json.dumps(counts))
"""


def _recipe(overrides):
    return to_recipe(compose_config(overrides))


def _key(overrides) -> str:
    return " ".join(overrides)


ALL_LAYOUTS = [[f"+recipe={size}", f"stage={stage}"] for size, stage in SHIPPED] + VARIANTS


@pytest.fixture(scope="module")
def meta_counts() -> dict[str, list[int]]:
    payload = json.dumps({_key(o): o for o in ALL_LAYOUTS})
    done = subprocess.run([sys.executable, "-c", _META_WORKER, payload], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("overrides", ALL_LAYOUTS, ids=[_key(o).replace("+recipe=", "") for o in ALL_LAYOUTS])
def test_per_rank_parameters_equal_megatron_meta_build(overrides, meta_counts):
    """Every shipped recipe, plus layouts that stress the formula (VPP chunks, tied embeddings across stages,
    TP beyond the KV heads, CP with PP, untied PP with VPP, PP3)."""
    plan = make_plan(_recipe(overrides))
    assert meta_counts[_key(overrides)] == plan.params_per_rank


def test_tied_embedding_copy_sits_on_the_last_stage():
    """3B (tied) at PP4: the last stage holds the final norm plus a V*h/tp copy of the embedding."""
    plan = make_plan(_recipe(["+recipe=3b", "parallel.pp=4"]))
    first, middle, last = plan.params_per_rank[0], plan.params_per_rank[1], plan.params_per_rank[-1]
    shape = get_shape("3b")
    assert first - middle == shape.vocab_size * shape.hidden_size
    assert last - middle == shape.vocab_size * shape.hidden_size + shape.hidden_size
    assert sum(plan.params_per_rank) == plan.params_total + shape.vocab_size * shape.hidden_size


@pytest.mark.parametrize("size, stage", [s for s in SHIPPED if s[0] != "tiny"],
                         ids=[f"{s}-{t}" for s, t in SHIPPED if s != "tiny"])
def test_shipped_recipe_fits_h100_with_margin(size, stage):
    plan = make_plan(_recipe([f"+recipe={size}", f"stage={stage}"]))
    assert plan.gpu == "h100" and plan.gpu_memory_gib == H100_GIB
    assert plan.fits
    assert plan.memory_gib_per_gpu <= (1 - HEADROOM) * H100_GIB, (
        f"{size}/{stage}: {plan.memory_gib_per_gpu} GiB leaves less than {HEADROOM:.0%} of {H100_GIB} GiB")


def test_plan_json_has_the_promised_fields():
    plan = make_plan(_recipe(["+recipe=32b", "stage=repo"])).to_json()
    for key in ("params_total", "params_per_rank_max", "memory_gib_per_gpu", "world_size", "tp", "pp", "vpp", "cp",
                "dp", "seq_length", "fits"):
        assert key in plan, key
    assert (plan["world_size"], plan["tp"], plan["pp"], plan["cp"], plan["dp"]) == (32, 8, 2, 2, 1)
    assert plan["params_total"] == 32_763_876_352
    assert plan["flops_per_token"] == training_flops_per_token(get_shape("32b"), 32768)
    json.dumps(plan)  # serialisable as is


def test_distributed_optimizer_shards_only_optimizer_state():
    on = make_plan(_recipe(["+recipe=7b"])).busiest
    off = make_plan(_recipe(["+recipe=7b", "parallel.distributed_optimizer=false",
                             "parallel.overlap_param_gather=false"])).busiest  # it gathers from the shards
    assert off.optimizer == 4 * on.optimizer  # DP4
    assert (off.weights, off.grads, off.activations) == (on.weights, on.grads, on.activations)
    assert on.optimizer == on.params * 12 // 4 and on.grads == on.params * 4 and on.weights == on.params * 2


def test_full_recompute_keeps_only_group_inputs():
    none = make_plan(_recipe(["+recipe=7b"])).busiest
    full = make_plan(_recipe(["+recipe=7b", "train.recompute=full", "train.recompute_num_layers=1"])).busiest
    assert full.activations < none.activations / 5
    # 28 checkpointed inputs of 8192 x 3584/2 bf16 elements (SP) + one layer recomputed + one working layer
    layer = none.activations // 29
    assert full.activations == 28 * 8192 * 1792 * 2 + 2 * layer


def test_interleaved_schedule_holds_narayanan_in_flight_layers():
    """Stage 0 of PP4 x VPP2 holds 11 chunks of L/8 layers = 1.375 L (Narayanan et al. 2021: L (1 + (p-1)/(p v)))."""
    layout = layout_of(_recipe(["+recipe=32b", "parallel.pp=4", "parallel.vpp=2", "run.nodes=4"]), 32)
    assert inflight(layout, 0) == (11, 1) and inflight(layout, 3) == (5, 1)
    plain = layout_of(_recipe(["+recipe=32b", "parallel.pp=4", "run.nodes=4"]), 32)
    assert inflight(plain, 0) == (4, 1) and inflight(plain, 3) == (1, 1)


def test_stage_specific_costs():
    dpo_plan = make_plan(_recipe(["+recipe=7b", "stage=dpo"]))
    as_sft = make_plan(_recipe(["+recipe=7b", "stage=dpo", "stage.name=sft"])).busiest
    assert dpo_plan.busiest.activations == 2 * as_sft.activations  # a pair is two sequences
    assert dpo_plan.busiest.weights == as_sft.weights  # precomputed reference: no frozen copy on the GPU
    assert any("reference log-probs" in note for note in dpo_plan.notes)
    repo = make_plan(_recipe(["+recipe=7b", "stage=repo"])).busiest
    assert repo.fp8_weight_cache > 0
    last = make_plan(_recipe(["+recipe=32b"])).stages[-1]
    assert last.logits >= 8192 * (152064 // 8) * 8  # bf16 logits + fp32 softmax + bf16 grad


def test_meta_build_refuses_an_existing_process_group():
    """It needs its own fake world; inside a live one it says so instead of corrupting megatron's state."""
    import torch
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from train.meta_count import meta_parameters_per_stage

    own = not torch.distributed.is_initialized()
    if own:
        torch.distributed.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="torch.distributed is already initialised.*plan.meta_build=false"):
            meta_parameters_per_stage(_recipe(["+recipe=tiny"]), 2)
    finally:
        if own:
            torch.distributed.destroy_process_group()


def test_allowance_is_fixed_plus_fragmentation():
    m = make_plan(_recipe(["+recipe=0.5b"])).busiest
    dynamic = m.total - m.allowance
    assert m.allowance == int(3 * GIB + 0.10 * dynamic)


def _run_plan(*overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "launch/plan.py", *overrides], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_json_is_one_object_and_writes_nothing():
    run_dir, log = REPO / "runs" / "32b-repo", REPO / "plan.log"
    existed = run_dir.exists(), log.exists()
    done = _run_plan("+recipe=32b", "stage=repo", "plan.format=json")
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert plan["fits"] is True and plan["meta_params_per_rank"] == plan["params_per_rank"]
    assert (run_dir.exists(), log.exists()) == existed  # Hydra made no run directory and no log file


def test_cli_text_reports_and_exits_1_when_it_does_not_fit():
    done = _run_plan("+recipe=7b", "train.micro_batch_size=4", "plan.meta_build=false")
    assert done.returncode == 1
    assert "DOES NOT FIT" in done.stdout and "tp=2 sp=on pp=1" in done.stdout
