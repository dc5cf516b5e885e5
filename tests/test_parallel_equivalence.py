"""Every parallel layout equals one rank: loss per step, every parameter gradient, parameters after each step.

fp32 on CPU (gloo), tiny shape with 4 layers, 3 Adam steps x 4 micro-batches; see tests/equivalence/worker.py.
Tolerances: loss |d| <= 1e-6; per-parameter gradient error <= 1e-5 of its largest element (measured: <= 8e-7);
parameters after each step |d| <= 1e-6 (measured: <= 6e-8). The distributed optimizer reduce-scatters gradients,
so for it the parameters after each step carry the check. The negative control shards SwiGLU's fc1 the naive
way and must be flagged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "equivalence" / "worker.py"
TWO_RANK = ["tp2", "tp2sp", "pp2", "pp2vpp2", "dp2", "dp2distopt", "cp2"]
FOUR_RANK = ["tp2pp2", "tp2cp2"]
TYINGS = ["tied", "untied"]
NEGATIVE_CONTROL = "tp2-untied-wrongshard"


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
    two = [f"{layout}-{tying}" for layout in TWO_RANK for tying in TYINGS] + [NEGATIVE_CONTROL]
    _run(torchrun + ["--nproc_per_node=2", str(WORKER), "compare", str(out), *two], repo)
    four = [f"{layout}-{tying}" for layout in FOUR_RANK for tying in TYINGS]
    _run(torchrun + ["--nproc_per_node=4", str(WORKER), "compare", str(out), *four], repo)
    return {path.stem.removeprefix("result-"): json.loads(path.read_text()) for path in out.glob("result-*.json")}


def _loss_error(result: dict) -> float:
    return max(abs(a - b) for a, b in zip(result["losses"], result["reference_losses"]))


@pytest.mark.parametrize("tying", TYINGS)
@pytest.mark.parametrize("layout", TWO_RANK + FOUR_RANK)
def test_layout_equals_one_rank(results, layout, tying):
    result = results[f"{layout}-{tying}"]
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
