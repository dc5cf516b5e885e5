"""MultiPL-E in every language through the real sandbox: MultiPL-E publishes no reference solutions, so each
language gets hand-written answers to HumanEval_53_add (x + y, in all nine files): a right one that passes, a
wrong one (x - y) that fails, and for compiled languages one that does not compile. The answers are model-style
completions with text after the language's stop token (a model keeps writing): the cut must remove it, or the
program would not build. Also: the data is the upstream release byte for byte (sha256 checked at load, a
changed byte refused), upstream ids and licence kept, and the packages the install script provides are the
ones the languages need. ~60 s on 2 cores (tsc, javac, go and g++ with bits/stdc++.h dominate).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evaluation.languages import LANGUAGES
from evaluation.sandbox import Limits, Sandbox
from evaluation.tasks import get, load_tasks, multiple
from evaluation.tasks.base import Answer, TaskContext, TaskError

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"cpp": 161, "java": 158, "php": 161, "ts": 159, "cs": 158, "sh": 158, "js": 161, "rs": 156, "go": 154}
AFTER = "\n\nint unrelated() { this is not code of any language }\n"  # what follows the stop token

# language -> (right body, wrong body, body that does not compile or ""), each continuing the prompt
BODIES = {
    "cpp": ("    return x + y;\n}", "    return x - y;\n}", "    return x + y\n}"),
    "java": ("        return x + y;\n    }\n", "        return x - y;\n    }\n", "        return x + y\n    }\n"),
    "php": ("    return $x + $y;\n}\nfunction", "    return $x - $y;\n}\nfunction", ""),
    "ts": ("    return x + y;\n}\nfunction ", "    return x - y;\n}\nfunction ", "    return 'x' + y;\n}\nfunction "),
    "cs": ("        return x + y;\n    }\n", "        return x - y;\n    }\n", "        return x + y\n    }\n"),
    "sh": ("    echo $(( $1 + $2 ))\n}", "    echo $(( $1 - $2 ))\n}", ""),
    "js": ("    return x + y;\n}\nfunction ", "    return x - y;\n}\nfunction ", ""),
    "rs": ("    x + y\n}", "    x - y\n}", "    x + y;\n}"),
    "go": ("    return x + y\n}\nfunc", "    return x - y\n}\nfunc", ""),  # go test builds and runs: one step
}


def _add_problem(language):
    task = get(f"multiple_{language}")
    return task, next(p for p in task.problems(0, TaskContext()) if p.task_id == "HumanEval_53_add")


@pytest.fixture(scope="module")
def verdicts():
    """(language, kind) -> Outcome for every hand-written answer, run in parallel through one sandbox."""
    sandbox = Sandbox(Limits(timeout_s=20), workers=2)
    jobs = {}
    for language, bodies in BODIES.items():
        task, problem = _add_problem(language)
        for kind, body in zip(("right", "wrong", "broken"), bodies):
            if body:
                _, head = task.head(problem, Answer(body + AFTER))
                jobs[language, kind] = (task.program(problem, head), language)
    with ThreadPoolExecutor(2) as pool:
        outcomes = pool.map(lambda job: sandbox.run(*job), jobs.values())
        return dict(zip(jobs, outcomes))


@pytest.mark.parametrize("language", list(BODIES))
def test_right_passes_wrong_fails_broken_does_not_compile(verdicts, language):
    right, wrong = verdicts[language, "right"], verdicts[language, "wrong"]
    assert right.status == "passed", right.output[-2000:]
    assert wrong.status == "failed", wrong.output[-2000:]
    if (language, "broken") in verdicts:
        broken = verdicts[language, "broken"]
        assert broken.status == "compile_error", broken.output[-2000:]
    if language == "cs":  # mono exits 0 after a failed Debug.Assert: only its trace marks the failure
        assert "DefaultTraceListener.Fail" in wrong.output


def test_data_is_the_upstream_release():
    data = multiple.DATA
    for language, count in COUNTS.items():
        raw = (data / f"humaneval-{language}.jsonl").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == multiple.SHA256[language]
        problems = load_tasks([f"multiple_{language}"])[f"multiple_{language}"]
        assert len(problems) == count
        assert all(re.fullmatch(r"HumanEval_\d+_\w+", p.task_id) for p in problems)
        assert all(p.language == language and p.stops and p.test for p in problems)
    assert "may not be used as training data" in (data / "LICENSE").read_text()
    strlen = _add_problem("cpp")[0].problems(0, TaskContext())
    assert any(p.task_id == "HumanEval_23_strlen" for p in strlen)


def test_a_changed_byte_is_refused(tmp_path, monkeypatch):
    original = (multiple.DATA / "humaneval-sh.jsonl").read_bytes()
    (tmp_path / "humaneval-sh.jsonl").write_bytes(original.replace(b"bash", b"Bash", 1))
    monkeypatch.setattr(multiple, "DATA", tmp_path)
    multiple.records.cache_clear()
    try:
        with pytest.raises(TaskError, match="sha256"):
            multiple.records("sh")
    finally:
        multiple.records.cache_clear()


def test_no_oracle_and_paper_columns():
    task, problem = _add_problem("java")
    with pytest.raises(TaskError, match="no reference"):
        task.oracle(problem)
    assert get("multiple_rs").column == "" and get("multiple_cs").column == "MultiPL-E C#"


def test_install_script_provides_every_language():
    script = (REPO / "deploy" / "install_languages.sh").read_text()
    listed = set(re.search(r"packages=\(([^)]*)\)", script).group(1).split())
    needed = {package for spec in LANGUAGES.values() for package in spec.packages}
    assert needed <= listed and "util-linux" in listed
    assert "bash deploy/install_languages.sh" in (REPO / ".ci" / "run").read_text()
    assert "RUN bash deploy/install_languages.sh" in (REPO / "Dockerfile").read_text()


def test_command_line_scores_completions_and_generations(tmp_path):
    """launch/evaluate.py with MultiPL-E's record kinds: a completion (cut at the stop token) and a generation
    (prompt + body, scored as given), each limited to its task by "task"; a wrong completion fails."""
    js_prompt = _add_problem("js")[1].prompt
    records = [
        {"task": "multiple_sh", "task_id": "HumanEval_53_add", "completion": BODIES["sh"][0] + AFTER},
        {"task": "multiple_sh", "task_id": "HumanEval_23_strlen", "completion": "    echo 0\n}"},
        {"task": "multiple_js", "task_id": "HumanEval_53_add", "generation": js_prompt + "    return x + y;\n}\n"},
    ]
    samples, rows_path = tmp_path / "samples.jsonl", tmp_path / "rows.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    completed = subprocess.run([sys.executable, "launch/evaluate.py", "--completions", str(samples), "--tasks",
                                "multiple_sh,multiple_js", "--output", str(rows_path)], cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {(r["task"], r["task_id"]): r for r in map(json.loads, rows_path.read_text().splitlines())}
    assert {key: row["passed"] for key, row in rows.items()} == {
        ("multiple_sh", "HumanEval_53_add"): True, ("multiple_sh", "HumanEval_23_strlen"): False,
        ("multiple_js", "HumanEval_53_add"): True}

# Qwen's published run failed this Bash answer with "bc: command not found" (13 of its 158 7B Bash verdicts say
# so); with bc installed both harnesses pass it here.
EXPLAINED_DIFFERENCES = {("multiple_sh", "HumanEval_0_has_close_elements")}


def test_recorded_comparison_on_published_model_outputs():
    """bench/multiple_published_verdicts.jsonl (bench/multiple_official.py --published --stride 8): the outputs
    Qwen published for Qwen2.5-Coder-7B base, every 8th problem of the seven report languages, scored by ours
    and by Qwen's harness here, each beside the verdict Qwen published. Their repository has no licence, so the
    texts are not kept and cannot be re-run here; this checks the record: it covers exactly those problems of
    our data (same ids and prompts), holds passes and failures in every language (a comparison that cannot be
    vacuous), and every verdict agrees except the rule differences docs/evaluation.md lists."""
    rows = [json.loads(line) for line in (REPO / "bench" / "multiple_published_verdicts.jsonl").read_text()
            .splitlines()]
    for language in ("cpp", "cs", "java", "js", "php", "sh", "ts"):
        task = get(f"multiple_{language}")
        chosen = [r for r in rows if r["task"] == task.name]
        assert [r["task_id"] for r in chosen] == [p.task_id for p in task.problems(0, TaskContext())][::8]
        assert all(r["prompt_equal"] and len(r["completion_sha256"]) == 64 for r in chosen)
        assert {r["published"] for r in chosen} == {True, False}, language
    differ = {(r["task"], r["task_id"]) for r in rows if not (r["agree"] and r["agree_published"])}
    assert differ == EXPLAINED_DIFFERENCES, differ
