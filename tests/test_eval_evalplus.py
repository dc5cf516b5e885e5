"""EvalPlus tasks (humaneval_plus, mbpp, mbpp_plus) against EvalPlus itself and against independent references.

- Data: the release files load only with their recorded sha256 (164 and 378 problems); one changed byte is one
  clear error.
- The float rule of the sandboxed driver (evaluation/evalplus_runner.py) equals numpy.allclose(rtol=1e-7, atol)
  on numbers, infinities, NaN, complex numbers and nested sequences, and the 1e-6 default is sticky for the rest
  of a test set as in EvalPlus.
- Scoring: the official evalplus scorer's per-sample verdicts (bench/evalplus_parity.json, written by
  bench/evalplus_parity.py) are replayed for a deterministic sample of canonical and mutated programs, failures
  included (negative control: the sample holds both verdicts), through our sandbox. On real model outputs
  (bench/evalplus_published_parity.json: the programs Qwen published for Qwen2.5-Coder-7B base) the record is
  checked: every problem, both verdicts present, the only disagreements the timing-bound ones named below.
The full oracle (all 164 + 378 + 378 canonical programs pass) is bench/eval_oracle.py: ~7 min on 2 loaded cores.
"""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.evalplus_parity import OUT as PARITY, PUBLISHED_OUT, samples
from evaluation import evalplus_runner as runner
from evaluation.harness import score
from evaluation.sandbox import Sandbox
from evaluation.tasks import evalplus, get, load_tasks
from evaluation.tasks.base import SOLUTION, Answer, TaskError

REPLAYED = 16


def test_release_files_are_checked(tmp_path, monkeypatch):
    assert len(evalplus.records("humaneval")) == 164 and len(evalplus.records("mbpp")) == 378
    assert evalplus.FILES["humaneval"][0].stat().st_size == 925_932
    assert evalplus.FILES["mbpp"][0].stat().st_size == 336_032
    assert (evalplus.FILES["mbpp"][0].parent / "LICENSE").read_text().lstrip().startswith("Apache License")
    changed = tmp_path / "MbppPlus.jsonl.gz"
    shutil.copy(evalplus.FILES["mbpp"][0], changed)
    data = bytearray(changed.read_bytes())
    data[100] ^= 1
    changed.write_bytes(bytes(data))
    monkeypatch.setitem(evalplus.FILES, "mbpp", (changed, evalplus.FILES["mbpp"][1]))
    evalplus.records.cache_clear()
    try:
        with pytest.raises(TaskError, match="not the upstream release"):
            evalplus.records("mbpp")
    finally:
        evalplus.records.cache_clear()


def test_mbpp_arguments_have_the_types_the_functions_take():
    by_id = {r["task_id"]: r for r in evalplus.records("mbpp")}
    assert by_id["Mbpp/2"]["base_input"][0] == [(3, 4, 5, 6), (5, 7, 4, 10)]
    assert all(isinstance(a[1], complex) for a in by_id["Mbpp/124"]["plus_input"])
    assert isinstance(by_id["Mbpp/63"]["base_input"][0][0][0], tuple)
    assert by_id["Mbpp/3"]["base_input"][0] == [1] and type(by_id["Mbpp/3"]["base_input"]) is list  # as stored


def test_float_rule_equals_numpy_allclose():
    rng = random.Random(0)
    values = [0.0, 1.0, -2.5, 1e-9, 3.0, 1e6, math.inf, -math.inf, math.nan, 5, 7]
    cases = []
    for _ in range(400):
        expected = rng.choice(values)
        out = expected * (1 + rng.choice([0, 1e-8, 3e-7, 1e-4])) + rng.choice([0, 5e-7, 2e-6])
        cases.append((out, expected, rng.choice([1e-6, 1e-4])))
    cases += [([1.0, 2.0], [1.0, 2.0000001], 1e-6), ((1.0, 2.5), (1.0, 2.6), 1e-6), (1 + 1e-7j, 1 + 0j, 1e-6),
              ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.000001]], 1e-6)]
    verdicts = [runner.close(out, expected, atol) for out, expected, atol in cases]
    assert verdicts == [bool(np.allclose(o, e, rtol=1e-7, atol=a)) for o, e, a in cases]
    assert 0 < sum(verdicts) < len(verdicts)  # both outcomes occur
    # the default atol appears with the first float output and stays for the rest of the set, as in EvalPlus
    passed, atol = runner.matches("humaneval", "f", (), 1.0000005, 1.0, 0)
    assert (passed, atol) == (True, 1e-6)
    assert runner.matches("humaneval", "f", (), [1, 2.0000005], [1, 2], atol) == (True, 1e-6)  # ints: sticky atol
    assert runner.matches("humaneval", "f", (), [1, 2.0000005], [1, 2], 0) == (False, 0)  # control: exact


@pytest.fixture(scope="module")
def parity():
    if not PARITY.is_file():
        pytest.fail(f"{PARITY} is missing: run bench/evalplus_parity.py")
    return json.loads(PARITY.read_text())


# The one disagreement of the checked-in run: evalplus failed its own canonical HumanEval/15 (string_sequence,
# n up to 1,000,011) on a plus input by the per-input time limit: it times the reference in its parent process
# and the candidate later, on 2 cores shared with other jobs; we time both in the same process.
TIMING = {("humaneval_plus", "HumanEval/15", "canonical")}


def test_checked_in_comparison_agrees_everywhere(parity):
    for task, result in parity["tasks"].items():
        assert result["samples"] == len(result["rows"]) == 148, task
        differing = {(task, r["task_id"], r["sample"]) for r in result["rows"] if not r["agree"]}
        assert differing <= TIMING and result["agree"] >= result["samples"] - len(TIMING), task
        assert 0 < result["official_passed"] < result["samples"], task  # passes and failures were compared


def test_replay_a_sample_of_the_comparison_through_our_sandbox(parity):
    sandbox = Sandbox(workers=2)
    for task, result in parity["tasks"].items():
        rows = result["rows"]
        failed = [r for r in rows if not r["official"]["passed"] and r["agree"]]
        passed = [r for r in rows if r["official"]["passed"] and r["sample"] != "canonical"]
        chosen = (failed[::max(1, len(failed) // (REPLAYED // 2))][:REPLAYED // 2]
                  + passed[::max(1, len(passed) // 4)][:4])
        problems = {p.task_id: p for p in load_tasks([task])[task]}
        records = {r["task_id"]: (n, r) for n, r in enumerate(evalplus.records(get(task).dataset))}
        for row in chosen:
            number, record = records[row["task_id"]]
            program = samples(record, number)[row["sample"]]
            (ours,) = score(get(task), [problems[row["task_id"]]], {row["task_id"]: Answer(program, SOLUTION)},
                            sandbox)
            assert ours["passed"] == row["official"]["passed"], (task, row)
            assert (ours.get("base_status") == "pass") == (row["official"]["base"] == "pass"), (task, row)


# Brute-force answers whose plus input runs ~0.9 s (Mbpp/160: find_solution(499, 499, 4000)) and ~2.1 s
# (Mbpp/392: get_max_sum(1000000)) on an idle core, against the 4 s per-input limit, and Mbpp/599's plus set (its
# reference alone took 143 s once): evalplus ran them at a load average of 20 to 28 and timed them out; ours, run
# after it, did not.
PUBLISHED_TIMING = {("mbpp_plus", "Mbpp/160"), ("mbpp_plus", "Mbpp/392"), ("mbpp_plus", "Mbpp/599")}


def test_recorded_comparison_on_published_model_outputs():
    """Qwen2.5-Coder-7B base's published EvalPlus programs, one per problem of our data, scored by evalplus and
    by ours (bench/evalplus_parity.py --published). The programs are not kept (their repository has no
    licence), so the record is checked: it covers every problem of our release, holds passes and failures, and
    every verdict agrees except the timing-bound ones above."""
    report = json.loads(PUBLISHED_OUT.read_text())
    for task, result in report["tasks"].items():
        rows = result["rows"]
        assert [r["task_id"] for r in rows] == [r["task_id"] for r in evalplus.records(get(task).dataset)]
        assert all(len(r["solution_sha256"]) == 64 and r["sample"] == "published" for r in rows)
        assert 0 < result["official_passed"] < len(rows), task
        differing = {(task, r["task_id"]) for r in rows if not r["agree"]}
        assert differing <= PUBLISHED_TIMING, differing
    assert report["tasks"]["humaneval_plus"]["agree"] == 164 and report["tasks"]["mbpp_plus"]["agree"] >= 375
