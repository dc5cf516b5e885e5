"""The GPU path's settings, checked on CPU: what megatron-core 0.16.1 needs from a recipe before any GPU runs.

- batches reach the model's device (forward_step), apex-only fusions stay off without apex, weights without
  Transformer Engine's `_extra_state` load, CUDA_DEVICE_MAX_CONNECTIONS, cp_comm_type, FP8 scope and rules;
- in one 2-rank gloo world (tests/gpu_settings_worker.py) against a 1-rank reference, fp32: per-token loss and
  every gradient at CP2 (one CP rank without a single loss token) and DP2 (96 vs 40 tokens per rank); PP stages
  seeded apart; a checkpoint saved with overlap_param_gather holds the updated weights.
Measured: loss |d| <= 2.4e-7 relative, gradients <= 7.4e-7 of each parameter's largest; first draws of the two
PP stages cosine 0.01 (1.0 with one seed); saved weights equal the non-overlapped run's exactly (1.0e-3 apart,
the size of one Adam step, when the save does not gather first).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recipes.compose import compose_config, to_recipe
from recipes.validate import check

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "gpu_settings_worker.py"


def _recipe(*overrides: str):
    return to_recipe(compose_config(list(overrides)))


def _rules(*overrides: str) -> list[str]:
    return [v.rule for v in check(OmegaConf.to_object(compose_config(list(overrides))))]


# ---- single process ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(gloo):
    from model.build import build_gpt_model
    from model.config import transformer_config
    from model.families import get_shape
    from train.distributed import init_model_parallel

    init_model_parallel()
    shape = get_shape("tiny", vocab_size=256)
    return shape, build_gpt_model(shape, transformer_config(shape, use_te=False), max_sequence_length=32)


def test_forward_step_hands_the_batch_to_the_models_device(tiny_model):
    """A model on another device (meta here; cuda on a GPU node) receives the loader's CPU batch there."""
    from train.objectives.lm import forward_step

    shape, model = tiny_model
    seen = {}

    class Seen(Exception):
        pass

    def record(module, args, kwargs):
        seen.update(tokens=kwargs["input_ids"].device, positions=kwargs["position_ids"].device)
        raise Seen  # the devices are what this test is about; the meta model cannot compute a loss

    model.to("meta")
    handle = model.embedding.register_forward_pre_hook(record, with_kwargs=True)
    batch = dict(tokens=torch.zeros(1, 32, dtype=torch.long), labels=torch.zeros(1, 32, dtype=torch.long),
                 loss_mask=torch.ones(1, 32), position_ids=torch.arange(32)[None])
    try:
        with pytest.raises(Seen):
            forward_step(iter([batch]), model)
    finally:
        handle.remove()
    assert seen == {"tokens": torch.device("meta"), "positions": torch.device("meta")}


def test_gradient_accumulation_fusion_needs_apex():
    """megatron's ColumnParallelLinear (the output layer, TE spec included) refuses the fusion without apex's
    fused_weight_gradient_mlp_cuda; the TE config asks for it only when that extension imports."""
    from megatron.core.tensor_parallel import ColumnParallelLinear

    from model.config import grad_accumulation_fusion_available, transformer_config
    from model.families import get_shape
    from train.distributed import init_model_parallel

    init_model_parallel()
    shape = get_shape("tiny")
    config = transformer_config(shape, use_te=True, apply_rope_fusion=False)  # TE's RoPE kernel: TE only
    assert config.gradient_accumulation_fusion == grad_accumulation_fusion_available()
    if not grad_accumulation_fusion_available():  # what the old setting did on a pip install without apex
        forced = transformer_config(shape, use_te=True, apply_rope_fusion=False, gradient_accumulation_fusion=True)
        with pytest.raises(RuntimeError, match="fused_weight_gradient_mlp_cuda"):
            ColumnParallelLinear(64, 128, config=forced, init_method=torch.nn.init.zeros_, bias=False)


def test_weights_without_te_extra_state_load(gloo, tmp_path):
    """A checkpoint without `_extra_state` entries (as the HF import writes for TE's modules) loads into a model
    that has them, with weights intact; a checkpoint missing a real tensor is still refused, by name."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from model.build import build_gpt_model
    from model.config import transformer_config
    from model.layers import SDPACoreAttention
    from model.families import get_shape
    from train.checkpoint import CheckpointError, load_weights
    from train.distributed import init_model_parallel

    init_model_parallel()
    shape = get_shape("tiny", vocab_size=256)

    def build(seed):
        torch.manual_seed(seed)
        model = build_gpt_model(shape, transformer_config(shape, use_te=False), max_sequence_length=32)
        for layer in model.decoder.layers:  # like TE's attention: `_extra_state` in state_dict, none sharded
            layer.self_attention.core_attention.__class__ = WithExtraState
        return model

    class WithExtraState(SDPACoreAttention):
        def get_extra_state(self):
            return torch.zeros(1)

        def set_extra_state(self, state):
            pass

    source = build(1)
    sharded = {k: v for k, v in source.sharded_state_dict().items()
               if not (isinstance(v, ShardedObject) and k.endswith("_extra_state"))}
    assert len(sharded) < len(source.sharded_state_dict())
    (tmp_path / "no-extra").mkdir()
    dist_checkpointing.save({"model": sharded}, str(tmp_path / "no-extra"))
    target = build(2)
    load_weights([target], tmp_path / "no-extra")  # bare chunks, as inference and conversion pass them
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        if not name.endswith("_extra_state"):
            assert torch.equal(a, b), name

    del sharded["decoder.final_layernorm.weight"]
    (tmp_path / "no-norm").mkdir()
    dist_checkpointing.save({"model": sharded}, str(tmp_path / "no-norm"))
    with pytest.raises(CheckpointError, match="decoder.final_layernorm.weight"):
        load_weights([build(3)], tmp_path / "no-norm")


def test_cuda_device_max_connections_from_the_recipe():
    from train.distributed import launch_environment

    assert launch_environment(_recipe("+recipe=7b", "stage=repo")) == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}  # TP2 CP4
    assert launch_environment(_recipe("+recipe=0.5b", "stage=repo")) == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}  # CP2
    assert launch_environment(_recipe("+recipe=0.5b", "stage=file")) == {}  # TP1 CP1: nothing to overlap
    assert launch_environment(_recipe("+recipe=7b", "stage=repo", "run.gpu=b200")) == {}  # Blackwell


def test_context_parallel_and_fp8_settings_reach_megatron():
    from train.megatron_args import ddp_config, transformer_runtime_kwargs

    repo = _recipe("+recipe=7b", "stage=repo")  # TP2 CP4, FP8 hybrid
    kwargs = transformer_runtime_kwargs(repo)
    assert kwargs["cp_comm_type"] == "p2p" and kwargs["context_parallel_size"] == 4
    assert kwargs["fp8"] == "hybrid" and kwargs["fp8_dot_product_attention"] is False
    assert transformer_runtime_kwargs(_recipe("+recipe=7b", "stage=repo", "precision.fp8_attention=true"))[
        "fp8_dot_product_attention"] is True
    assert "cp_comm_type" not in transformer_runtime_kwargs(_recipe("+recipe=7b"))
    assert ddp_config(repo).average_in_collective is False


def test_validator_gpu_rules(monkeypatch):
    assert "distributed-optimizer" in _rules("+recipe=7b", "parallel.distributed_optimizer=false")  # overlap on
    assert "distributed-optimizer" in _rules("+recipe=7b", "stage=repo", "parallel.distributed_optimizer=false",
                                             "parallel.overlap_param_gather=false", "precision.fp8_param=true")
    assert "distributed-optimizer" not in _rules("+recipe=7b", "parallel.distributed_optimizer=false",
                                                 "parallel.overlap_param_gather=false")
    # FP8 + CP: 7B repo is TP2 CP4 -> lcm(16, 16) = 16. 3B at TP16 CP2 -> lcm(16, 64) = 64, while the per-rank
    # rule (fp8-sequence) only asks 32736 / 2 = 16 x 1023 of it.
    assert "fp8-cp-sequence" not in _rules("+recipe=7b", "stage=repo")
    wide = _rules("+recipe=3b", "stage=repo", "parallel.tp=16", "parallel.sp=false", "parallel.cp=2",
                  "train.seq_length=32736")
    assert "fp8-cp-sequence" in wide and "fp8-sequence" not in wide, wide
    from recipes import validate

    for version, recipe, flagged in (((2, 1), "tensorwise", True), ((2, 2), "tensorwise", False),
                                     ((2, 2), "blockwise", True), ((2, 3), "blockwise", False),
                                     ((1, 13), "delayed", False), (None, "blockwise", False)):
        monkeypatch.setattr(validate, "installed_transformer_engine", lambda: version)
        rules = _rules("+recipe=7b", "stage=repo", f"precision.fp8_recipe={recipe}")
        assert ("fp8-te-version" in rules) == flagged, (version, recipe, rules)


def test_installed_transformer_engine_reads_package_metadata():
    import importlib.util

    from recipes.validate import installed_transformer_engine

    if importlib.util.find_spec("transformer_engine") is None:
        assert installed_transformer_engine() is None
    else:
        assert installed_transformer_engine() >= (1, 0)


def test_multi_gpu_recipes_overlap_communication():
    for size in ("0.5b", "1.5b", "3b", "7b", "14b", "32b"):
        parallel = _recipe(f"+recipe={size}").parallel
        assert parallel.overlap_grad_reduce and parallel.overlap_param_gather and parallel.distributed_optimizer
    assert not _recipe("+recipe=tiny").parallel.overlap_param_gather  # CPU ranks: nothing to overlap with


# ---- one 2-rank world --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu-settings")
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    for command in ([sys.executable, str(WORKER), "reference", str(out)],
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     str(WORKER), "compare", str(out)]):
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads((out / "compare.json").read_text())


@pytest.mark.parametrize("case", ["cp2/cp-rank-empty", "cp2/uneven", "dp2/cp-rank-empty", "dp2/uneven"])
def test_per_token_loss_is_exact_under_cp_and_dp(world, case):
    result = world[case]
    assert result["grads_finite"] and result["tokens"] == result["reference_tokens"], result
    assert abs(result["loss"] - result["reference_loss"]) <= 2e-7 * result["reference_loss"], result
    assert result["grad_rel_max"] <= 1e-5, result


def test_a_cp_rank_without_loss_tokens(world):
    assert world["cp2/loss_tokens_per_rank"] == [128.0, 0.0]  # rank 1 holds no loss token, and no NaN above


def test_dp_ranks_hold_different_token_counts(world):
    """Vacuity control for the DP case: with equal counts per rank a mean of rank means would equal the
    per-token mean, so the batch gives the ranks 96 and 40 loss tokens."""
    from tests.gpu_settings_worker import batches

    _, mask = batches()["uneven"]
    assert [mask[0::2].sum().item(), mask[1::2].sum().item()] == [96.0, 40.0]
    assert world["dp2/uneven"]["tokens"] == 136


def test_pipeline_stages_draw_from_their_own_seeds(world):
    assert abs(world["pp2/first_draws_cosine"]) < 0.1, world


def test_checkpoint_with_overlap_param_gather_holds_updated_weights(world):
    assert world["overlap=True/moved_from_init"] > 1e-4  # the step changed the weights
    assert world["overlap/saved_vs_plain_max_abs_diff"] == 0.0, world


# ---- bench/gpu_acceptance.py on a machine without a GPU -------------------------------------------------------
def _readme_line(prefix: str) -> str:
    lines = [line for line in (REPO / "docs" / "testing.md").read_text().splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"docs/testing.md should print `{prefix}` once: {lines}"
    return lines[0]


def test_gpu_acceptance_plan_fits_eight_minutes():
    """docs/testing.md's `--plan` line, run as printed: every check with its budget, installs included, <= 480 s."""
    done = subprocess.run(["bash", "-c", _readme_line("python bench/gpu_acceptance.py --plan")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    budgets = {row[0]: int(row[1].rstrip("s")) for row in rows}
    assert {"install", "te-numerics", "hf-te", "train-fp8", "throughput", "dali"} <= set(budgets)
    assert sum(v for k, v in budgets.items() if k != "total") == budgets["total"] <= 480


def test_gpu_acceptance_without_cuda_exits_3_quickly():
    import shutil
    import time

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "bench/gpu_acceptance.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert len(done.stdout.strip().splitlines()) == 1 and "no CUDA device" in done.stdout
    assert time.perf_counter() - started < 10
