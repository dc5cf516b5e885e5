"""launch/pipeline.py: the tiny recipe through every stage, evaluation and export on CPU, killed mid-stage and
run again (complete stages skipped, the interrupted one resumed); and its one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.run_helpers import FAST, REPO, STDLIB, environment, kill_group, prepare_code_dataset
from tests.test_stages_e2e import _docstrings, _prepare

PIPELINE = [sys.executable, str(REPO / "launch" / "pipeline.py")]


def _pipeline_data(work) -> list[str]:
    """STEP:data.sources overrides for the four stages, from real stdlib code and docstrings."""
    code = prepare_code_dataset(work, packages=("json",))
    shutil.copytree(STDLIB / "json", work / "repos" / "json", ignore=shutil.ignore_patterns("__pycache__"))
    _prepare(["--input", str(work / "repos"), "--output-prefix", str(work / "repo"), "--mode", "repo",
              "--seq-length", "1024"])
    docs = _docstrings(("json", "pathlib"))
    chat, pairs = work / "chat.jsonl", work / "pairs.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What does {name} do?"},
                                                     {"role": "assistant", "content": text}]}) + "\n"
                            for name, text in docs))
    pairs.write_text("".join(json.dumps({"prompt": f"What does {name} do?", "chosen": text,
                                         "rejected": docs[index + 1][1]}) + "\n"
                             for index, (name, text) in enumerate(docs[:16])))
    source = "data.sources=[{{name: {}, prefix: {}, weight: 1.0}}]".format
    return [f"file:{source('code', code)}", f"repo:{source('code', work / 'repo')}",
            f"sft:{source('chat', chat)}", f"dpo:{source('pairs', pairs)}"]


def _wait_for(path, process, seconds=600):
    deadline = time.monotonic() + seconds
    while not path.is_file() or path.read_text().strip() != "step_00000002":
        assert process.poll() is None, "the pipeline ended before the repo stage saved its first checkpoint"
        assert time.monotonic() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.5)


def test_pipeline_runs_every_stage_and_resumes_after_kill(tmp_path):
    pipeline_dir = tmp_path / "pipe"
    command = [*PIPELINE, "+recipe=tiny", f"--dir={pipeline_dir}", *FAST, "train.train_iters=2",
               "train.eval_interval=0", "data.split='100,0,0'", "checkpoint.save_interval=0", *_pipeline_data(tmp_path),
               "repo:train.train_iters=4", "repo:checkpoint.save_interval=2",
               "evaluate:--tasks=humaneval", "evaluate:--limit=2", "evaluate:--max-new-tokens=8"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    _wait_for(pipeline_dir / "repo" / "checkpoints" / "latest", first)
    kill_group(first)
    first.wait()
    assert not (pipeline_dir / "sft").exists()

    again = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    out = again.stdout + again.stderr
    assert "[file] complete, skipped" in out and "[repo] resumes at step 2 of 4" in out, out[:3000]
    assert "resumed from" in out and "at step 2" in out  # the repo stage continued its own checkpoint
    for stage, steps in (("file", 2), ("repo", 4), ("sft", 2), ("dpo", 2)):
        latest = (pipeline_dir / stage / "checkpoints" / "latest").read_text().strip()
        assert latest == f"step_{steps:08d}", (stage, latest)
        logged = [json.loads(line)["step"] for line in (pipeline_dir / stage / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in line]
        assert sorted(set(logged)) == list(range(1, steps + 1)), (stage, logged)
    for stage in ("repo", "sft", "dpo"):  # each stage started from the previous one's weights
        assert "initial weights from" in (pipeline_dir / stage / "logs" / "rank0.log").read_text()
    rows = [json.loads(line) for line in (pipeline_dir / "evaluation.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert (pipeline_dir / "hf" / "config.json").is_file()
    group = pipeline_dir.name.encode()  # one W&B group for every stage (the offline run files hold it)
    for stage in ("file", "repo", "sft", "dpo"):
        runs = list((pipeline_dir / stage / "wandb").glob("offline-run-*/run-*.wandb"))
        # any: a run killed by SIGKILL may leave its offline file cut before the config record
        assert any(group in run.read_bytes() for run in runs), stage

    done = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.count("complete, skipped") == 6, done.stdout


@pytest.mark.parametrize("arguments,message", [
    (["train.train_iters=2"], "+recipe=SIZE"),
    (["+recipe=tiny", "rpo:train.train_iters=2"], "names step 'rpo'"),
    (["+recipe=tiny", "--stages=file,evaluate"], "training stages only"),
    (["+recipe=tiny", "train.train_itres=2"], "train_itres"),
])
def test_pipeline_errors_are_one_line(arguments, message):
    done = subprocess.run([*PIPELINE, *arguments, "--plan"], cwd=REPO, env=environment(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("error") == 1, done.stderr  # one message
    assert "Traceback" not in done.stderr


def test_plan_prints_each_step_with_the_planner_verdict(tmp_path):
    done = subprocess.run([*PIPELINE, "+recipe=7b", f"--dir={tmp_path / 'p'}", "--plan"], cwd=REPO,
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = [line.split("]")[0][1:] for line in lines if line.startswith("[")]
    assert names == ["file", "repo", "sft", "dpo", "evaluate", "export"], lines
    assert sum("GiB per GPU: fits" in line for line in lines) == 4, lines
    assert f"checkpoint.load={tmp_path / 'p' / 'repo'}" in lines[names.index("sft") * 2]  # sft starts from repo
    assert not (tmp_path / "p").exists()  # a plan runs nothing
