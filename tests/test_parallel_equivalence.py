"""Every parallel layout equals one rank: loss per step, every parameter gradient, parameters after each step.

fp32 on CPU (gloo), tiny shape with 4 layers, 3 Adam steps x 4 micro-batches; see tests/equivalence/worker.py.
Tolerances: loss |d| <= 1e-6; per-parameter gradient error <= 1e-5 of its largest element (measured: <= 8e-7);
parameters after each step |d| <= 1e-6 (measured: <= 6e-8). The distributed optimizer reduce-scatters gradients,
so for it the parameters after each step carry the check. Every result carries the TP/PP/VPP/CP/DP sizes megatron
actually built, checked against the layout's name. Negative controls must be flagged: SwiGLU's fc1 sharded the
naive way, causal masking on contiguous instead of load-balanced CP positions, the layers loaded into the wrong
pipeline stage. One bf16 run of the main job's layout (TP2) checks the bf16 path against the fp32 reference with
loose bounds. `cp2mask`: core attention with an attention mask at CP2 equals full-sequence attention (measured
2.4e-7; 2.75 when the mask's key order is not matched to the gathered K/V).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "equivalence" / "worker.py"
TWO_RANK = ["tp2", "tp2sp", "pp2", "pp2vpp2", "dp2", "dp2distopt", "cp2"]
FOUR_RANK = ["tp2pp2", "tp2cp2"]
TYINGS = ["tied", "untied"]
NEGATIVE_CONTROL = "tp2-untied-wrongshard"
# Each must be flagged: wrong causal positions under CP, the reference layers loaded into the wrong PP stage.
NEGATIVE_CONTROLS = {"cp2-tied-wrongcp": "cp", "pp2-tied-wrongsplit": "pp"}
BF16 = "tp2-tied-bf16"  # the main job's layout in the precision every shipped GPU recipe uses
# bf16 vs the fp32 reference, measured: loss 6.7e-5, gradient 1.5e-2 of the largest element, parameters 1.8e-3;
# the CP/PP negative controls give gradient errors >= 0.48, so the gradient bound still separates defects.
BF16_LOSS_TOL, BF16_GRAD_TOL, BF16_PARAM_TOL = 5e-4, 5e-2, 5e-3


def _run(command: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{' '.join(command)} failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-6000:]}"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("equivalence")
    repo = Path(__file__).resolve().parents[1]
    _run([sys.executable, str(WORKER), "reference", str(out)], repo)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    two = [f"{layout}-{tying}" for layout in TWO_RANK for tying in TYINGS] + [NEGATIVE_CONTROL, *NEGATIVE_CONTROLS,
                                                                              BF16, "cp2mask"]
    _run(torchrun + ["--nproc_per_node=2", str(WORKER), "compare", str(out), *two], repo)
    four = [f"{layout}-{tying}" for layout in FOUR_RANK for tying in TYINGS]
    _run(torchrun + ["--nproc_per_node=4", str(WORKER), "compare", str(out), *four], repo)
    return {path.stem.removeprefix("result-"): json.loads(path.read_text()) for path in out.glob("result-*.json")}


def _loss_error(result: dict) -> float:
    return max(abs(a - b) for a, b in zip(result["losses"], result["reference_losses"]))


def _assert_layout_took_effect(result: dict, layout: str, world: int) -> None:
    spec = {k: int(v) for k, v in re.findall(r"(tp|pp|vpp|cp)(\d+)", layout.split("-")[0])}
    expected = {k: spec.get(k, 1) for k in ("tp", "pp", "vpp", "cp")}
    expected["dp"] = world // (expected["tp"] * expected["pp"] * expected["cp"])
    assert result["sizes"] == expected, (layout, result["sizes"])


@pytest.mark.parametrize("tying", TYINGS)
@pytest.mark.parametrize("layout", TWO_RANK + FOUR_RANK)
def test_layout_equals_one_rank(results, layout, tying):
    result = results[f"{layout}-{tying}"]
    _assert_layout_took_effect(result, layout, 2 if layout in TWO_RANK else 4)
    assert len(result["losses"]) == 3
    assert _loss_error(result) <= 1e-6, result
    assert max(result["param_abs_max"]) <= 1e-6, result
    if "distopt" in layout:
        assert result["dp"] == 2 and result["grads_checked"] == 0
    else:
        assert result["grads_checked"] > 0, "no gradient was compared"
        assert max(result["grad_rel_max"]) <= 1e-5, result


def test_negative_control_wrong_shard_is_caught(results):
    result = results[NEGATIVE_CONTROL]
    assert max(result["grad_rel_max"]) > 1e-2, f"a wrongly sharded fc1 went unnoticed: {result}"
    assert _loss_error(result) > 1e-5, result


@pytest.mark.parametrize("layout", list(NEGATIVE_CONTROLS))
def test_negative_controls_for_cp_and_pp_are_caught(results, layout):
    result = results[layout]
    _assert_layout_took_effect(result, layout, 2)
    assert _loss_error(result) > 1e-4, f"{NEGATIVE_CONTROLS[layout]} defect went unnoticed: {result}"
    assert max(result["grad_rel_max"]) > 1e-2, result


def test_bf16_main_job_layout_tracks_fp32_reference(results):
    """bf16 params and activations (fp32 grads and Adam, as shipped) stay close to the fp32 one-rank run."""
    result = results[BF16]
    _assert_layout_took_effect(result, BF16, 2)
    assert _loss_error(result) <= BF16_LOSS_TOL, result
    assert max(result["grad_rel_max"]) <= BF16_GRAD_TOL, result
    assert max(result["param_abs_max"]) <= BF16_PARAM_TOL, result
    assert _loss_error(result) > 0, "bf16 identical to fp32: the bf16 path did not run"


def test_cp_attention_mask_follows_the_gathered_key_order(results):
    assert results["cp2mask"]["max_abs_error"] <= 1e-5, results["cp2mask"]
