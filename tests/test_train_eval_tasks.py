"""Evaluation tasks during training (train.eval_tasks, evaluation.during_training), end to end on the tiny model
at TP2 with sequence parallelism, 4 steps, humaneval + fim_singleline (first 3 problems, 12 new tokens) every 2:
- metrics.jsonl holds eval/TASK/METRIC at steps 2 and 4 only, equal to the summary of the rows the hook wrote;
- launch/evaluate.py on the checkpoint saved at step 2 (rebuilt from disk, SP off, its own decoder) writes the
  same rows, completions and verdicts, as the hook did at step 2, and logs the same numbers; the step-4
  completions differ from them (negative control: the hook decodes the weights of its step, not stale ones);
- the loss, gradient norm and validation loss of every step equal those of the same run without the hook;
- an unknown task name ends the run with one `error:` line naming the known tasks.
The embeddings are untied: a freshly trained tiny model with tied embeddings repeats its prompt's last token
whatever its weights, which would make the completions equal for any two models. The run without the hook is
conftest.tiny_tp2_run, shared with tests/test_eval_models.py. Cost: the hooked 4-step run (~35 s of wall clock on
an idle 2-core machine) and the evaluation (~13 s).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.harness import summarize
from evaluation.run_log import run_values
from tests.run_helpers import environment, run_pretrain

REPO = Path(__file__).resolve().parents[1]
TASKS = "humaneval,fim_singleline"


def records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def rows(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tp2_run):
    """The shared tiny TP2 run (conftest.tiny_tp2_run) is the run without the hook; the same run again with it."""
    work = tmp_path_factory.mktemp("eval-tasks")
    hooked, plain = work / "hooked", tiny_tp2_run.run_dir
    trained = run_pretrain(2, [*tiny_tp2_run.overrides, f"run.dir={hooked}", f"train.eval_tasks=[{TASKS}]",
                               "train.eval_tasks_limit=3", "train.eval_tasks_max_new_tokens=12"])
    assert trained.returncode == 0, trained.stderr[-5000:]
    hooked_records = records(hooked)  # before launch/evaluate.py appends its own
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "launch/evaluate.py", "--checkpoint", str(hooked / "checkpoints" / "step_00000002"), "--tasks", TASKS,
               "--limit", "3", "--max-new-tokens", "12", "--output", str(work / "rows.jsonl")]
    evaluated = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-5000:]
    return dict(work=work, hooked=hooked, plain=plain, hooked_records=hooked_records)


def test_eval_values_are_logged_at_the_cadence(runs):
    logged = [r for r in runs["hooked_records"] if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in logged] == [2, 4]
    for record in logged:
        step_rows = rows(runs["hooked"] / "eval" / f"step_{record['step']}.jsonl")
        assert len(step_rows) == 6 and {r["task"] for r in step_rows} == set(TASKS.split(","))
        summaries = [summarize(task, [r for r in step_rows if r["task"] == task]) for task in TASKS.split(",")]
        expected = run_values(summaries)
        assert set(expected) == {"eval/humaneval/pass@1", "eval/fim_singleline/pass@1",
                                 "eval/fim_singleline/exact_match"}
        assert {k: v for k, v in record.items() if k.startswith("eval/")} == expected


def test_completions_equal_launch_evaluate_on_that_steps_checkpoint(runs):
    hook2 = rows(runs["hooked"] / "eval" / "step_2.jsonl")
    hook4 = rows(runs["hooked"] / "eval" / "step_4.jsonl")
    evaluated = rows(runs["work"] / "rows.jsonl")
    assert [r["task_id"] for r in evaluated] == [r["task_id"] for r in hook2]
    assert all(r["completion"] for r in hook2)  # something was decoded
    assert evaluated == hook2  # completions, statuses, verdicts, program output
    assert [r["completion"] for r in hook4] != [r["completion"] for r in hook2]  # negative control
    assert [r["completion"] for r in evaluated] != [r["completion"] for r in hook4]
    # launch/evaluate.py logged its summary into the same run at step 2: the same keys and numbers
    after = records(runs["hooked"])[len(runs["hooked_records"]):]
    assert len(after) == 1 and after[0]["step"] == 2
    hook_record = next(r for r in runs["hooked_records"] if r["step"] == 2 and "eval/humaneval/pass@1" in r)
    assert {k: v for k, v in after[0].items() if k != "time"} == {k: v for k, v in hook_record.items() if k != "time"}


def test_training_numbers_equal_a_run_without_the_hook(runs):
    def numbers(run_records):
        keep = ("loss", "grad_norm", "lr", "val_loss")
        return [(r["step"], {k: r[k] for k in keep if k in r}) for r in run_records
                if any(k in r for k in keep)]

    hooked, plain = numbers(runs["hooked_records"]), numbers(records(runs["plain"]))
    assert [step for step, _ in plain] == [1, 2, 2, 3, 4, 4]  # 4 training records, validation at 2 and 4
    assert hooked == plain  # exact: the hook leaves weights, optimizer, data order and random states alone
    assert not (runs["plain"] / "eval").exists()


def test_unknown_task_name_is_one_error_line(tmp_path):
    quiet = {k: v for k, v in environment().items() if k != "HYDRA_FULL_ERROR"}  # that one asks for a traceback
    completed = subprocess.run([sys.executable, "launch/pretrain.py", "+recipe=tiny", "train.eval_tasks=[humanevl]",
                                f"run.dir={tmp_path / 'run'}"], cwd=REPO, env=quiet, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 2, completed.stderr[-3000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown task 'humanevl'" in errors[0] and "humaneval" in errors[0], completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_sequence_parallel_flags_are_restored():
    """Each flag goes back to its own value (megatron's set_model_to_sequence_parallel would set them all to one)."""
    import torch

    from evaluation.during_training import sequence_parallel_off

    class Config:
        sequence_parallel = True

    config = Config()
    outer, inner = torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 2)
    outer.append(inner)
    outer.sequence_parallel, outer.config = True, config
    inner.scatter_to_sequence_parallel, inner.reduce_scatter_embeddings = True, False
    with sequence_parallel_off([outer]):
        assert not (outer.sequence_parallel or config.sequence_parallel or inner.scatter_to_sequence_parallel
                    or inner.reduce_scatter_embeddings)
    assert (outer.sequence_parallel, config.sequence_parallel, inner.scatter_to_sequence_parallel,
            inner.reduce_scatter_embeddings) == (True, True, True, False)
    assert not hasattr(inner, "sequence_parallel")  # nothing added where there was no flag


def test_paper_during_training_skips_what_cannot_run_here(monkeypatch, tmp_path, capsys):
    """train.eval_tasks=[paper] without hm_fim's file: every other paper task is loaded, hm_fim is left out with
    one notice; named on its own it stops the run (as launch/evaluate.py does)."""
    from evaluation.during_training import TaskEvaluation
    from evaluation.tasks import TaskError, paper
    from recipes.compose import build_recipe, compose_config

    monkeypatch.delenv("HM_FIM_DATA", raising=False)
    monkeypatch.setenv("RANK", "0")
    recipe = build_recipe(compose_config(["+recipe=tiny", "train.eval_tasks=[paper]", "train.eval_tasks_limit=1",
                                          f"run.dir={tmp_path / 'run'}"]))
    evaluation = TaskEvaluation(recipe)
    assert sorted(evaluation.tasks) == sorted(set(paper()) - {"hm_fim"}) and "hm_fim" in paper()
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notices) == 1 and "hm_fim" in notices[0] and "HM_FIM_DATA" in notices[0], notices
    named = build_recipe(compose_config(["+recipe=tiny", "train.eval_tasks=[hm_fim]", f"run.dir={tmp_path / 'r'}"]))
    with pytest.raises(TaskError, match="hm_fim"):
        TaskEvaluation(named)
