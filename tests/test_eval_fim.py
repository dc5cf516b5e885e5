"""fim_singleline (OpenAI's HumanEval-SingleLineInfilling) and hm_fim (SantaCoder's FIM set, Qwen's protocol).

- fim_singleline: the vendored file is the upstream release (sha256 checked at load; a one-byte change is
  refused); its 1,033 tasks cut whole lines (middle = the line with its newline, suffix from the next line),
  each problem's tasks rebuild one program; the oracle passes (pass@1 and exact match 1.000) on a deterministic
  subset (every 7th task, 148 programs; bench/eval_oracle.py runs all); the next task's line and the line
  without its newline (the cut of the set this replaced) fail; a completion is cut after its first newline.
  "Each problem's tasks rebuild one program" holds up to blank lines: upstream's L0 cuts of 123 problems keep
  the blank line after the docstring that the other cuts of the same problem drop.
- hm_fim: its data is not shipped, so a small parquet file in the upstream schema is written here; the prompt
  cuts (last 1,472 prefix tokens, first 512 suffix tokens), task ids, Qwen's first-line rule and the
  per-language summary are checked on it; a missing file gives one TaskError naming HM_FIM_DATA; the hub is
  asked only with HM_FIM_DATA=hub.
  tests/test_eval_parity.py compares both tasks with the official scorers.
"""
from __future__ import annotations

import gzip

import pytest

from data.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS, load_tokenizer
from evaluation.generate import prompt_ids
from evaluation.harness import score, summarize
from evaluation.report import table
from evaluation.run_log import run_values
from evaluation.sandbox import Sandbox
from evaluation.tasks import get, load_tasks
from evaluation.tasks import fim_singleline, hm_fim
from evaluation.tasks.base import Answer, TaskContext, TaskError
from evaluation.tasks.data_files import DataFileError


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox()


@pytest.fixture(scope="module")
def problems():
    return load_tasks(["fim_singleline"])["fim_singleline"]


def test_fim_singleline_is_the_upstream_release(problems):
    assert len(problems) == 1033 and len({p.task_id for p in problems}) == 1033
    assert problems[0].task_id == "SingleLineInfilling/HumanEval/0/L0"
    assert problems[-1].task_id.startswith("SingleLineInfilling/HumanEval/163/")
    programs = {}
    for problem in problems:
        assert problem.reference.endswith("\n") and problem.reference.count("\n") == 1, problem.task_id
        assert problem.prompt.endswith("\n") and problem.fim
        text = problem.prompt + problem.reference + problem.suffix  # upstream keeps a blank line in some L0 cuts
        programs.setdefault(problem.task_id.rsplit("/", 1)[0], set()).add(
            "".join(line for line in text.splitlines(keepends=True) if line.strip()))
    assert len(programs) == 164 and all(len(texts) == 1 for texts in programs.values())


def test_a_changed_data_file_is_refused(tmp_path, monkeypatch):
    changed = tmp_path / fim_singleline.DATA.name
    original = gzip.decompress(fim_singleline.DATA.read_bytes())
    changed.write_bytes(gzip.compress(original.replace(b"return", b"retunr", 1)))
    monkeypatch.setattr(fim_singleline, "DATA", changed)
    fim_singleline.records.cache_clear()
    with pytest.raises(DataFileError, match="sha256 .* expected 1277073e"):
        fim_singleline.records()
    monkeypatch.undo()
    fim_singleline.records.cache_clear()
    assert len(fim_singleline.records()) == 1033  # control: the shipped file loads


def test_fim_prompt_is_psm_with_single_sentinel_ids(problems):
    tokenizer = load_tokenizer("qwen2.5")
    problem = problems[5]
    assert prompt_ids(tokenizer, problem) == [SPECIAL_TOKENS[FIM_PREFIX], *tokenizer.encode(problem.prompt),
                                              SPECIAL_TOKENS[FIM_SUFFIX], *tokenizer.encode(problem.suffix),
                                              SPECIAL_TOKENS[FIM_MIDDLE]]
    assert problem.stops == ("\n",) and problem.max_new_tokens == 64


def test_oracle_passes_and_wrong_lines_fail(problems, sandbox):
    task, subset = get("fim_singleline"), problems[::7]
    oracle = summarize(task, score(task, subset, {p.task_id: task.oracle(p) for p in subset}, sandbox))
    assert (oracle["problems"], oracle["pass@1"], oracle["exact_match"]) == (148, 1.0, 1.0), oracle
    few = subset[:40]
    shifted = {p.task_id: few[(i + 1) % len(few)].reference for i, p in enumerate(few)}
    wrong = summarize(task, score(task, few, shifted, sandbox))
    assert wrong["exact_match"] < 0.1 and wrong["pass@1"] < 0.3, wrong
    joined = summarize(task, score(task, few, {p.task_id: p.reference.rstrip("\n") for p in few}, sandbox))
    assert joined["exact_match"] == 1.0 and joined["pass@1"] < 0.7, joined  # the newline belongs to the middle


def test_a_completion_is_cut_after_its_first_newline(problems, sandbox):
    task, problem = get("fim_singleline"), problems[0]
    rows = score(task, [problem], {problem.task_id: problem.reference + "        pass\n    return 1\n"}, sandbox)
    assert rows[0]["completion"] == problem.reference and rows[0]["passed"] and rows[0]["exact_match"]
    with pytest.raises(TaskError, match="infilling"):
        task.head(problem, Answer("def f(): pass", "solution"))


# ------------------------------------------------------------------------------------------ hm_fim
@pytest.fixture
def hm_fim_file(tmp_path, monkeypatch):
    """Six rows in the upstream schema (two per language); the first prefix is longer than the 1,472-token cut
    and the first suffix longer than 512 tokens."""
    import pyarrow
    import pyarrow.parquet

    long_prefix = "".join(f"def helper_{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(300))
    long_suffix = "\n" + "".join(f"    total += {i}\n" for i in range(300)) + "    return total\n"
    rows = [dict(name="humaneval-HumanEval_1_a.json-L3", language="py", prompt=long_prefix + "def f(n):\n",
                 suffix=long_suffix, canonical_solution="    total = n", tests=""),
            dict(name="humaneval-HumanEval_1_a.json-L3", language="js", prompt="function f(n){\n",
                 suffix="\n  return n;\n}", canonical_solution="  n += 1;", tests=""),
            dict(name="humaneval-HumanEval_2_b.json-L4", language="js", prompt="function g(s){\n",
                 suffix="\n}", canonical_solution="  return s.length;", tests=""),
            dict(name="humaneval-HumanEval_1_a.json-L5", language="java", prompt="class P {\n",
                 suffix="\n}", canonical_solution="    int x = 0;", tests=""),
            dict(name="humaneval-HumanEval_2_b.json-L6", language="java", prompt="class Q {\n",
                 suffix="\n}", canonical_solution="    return;", tests=""),
            dict(name="humaneval-HumanEval_3_c.json-L2", language="py", prompt="def h():\n",
                 suffix="\n", canonical_solution="    return 3", tests="")]
    path = tmp_path / "train.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    import hashlib

    monkeypatch.setattr(hm_fim, "SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(hm_fim, "ROWS", len(rows))
    monkeypatch.setenv(hm_fim.ENV, str(path))
    return rows


def test_hm_fim_prompts_are_cut_as_qwen_cuts_them(hm_fim_file):
    tokenizer = load_tokenizer("qwen2.5")
    problems = load_tasks(["hm_fim"])["hm_fim"]
    assert [p.task_id for p in problems] == [f"{r['language']}/{r['name']}" for r in hm_fim_file]
    first, raw = problems[0], hm_fim_file[0]
    prefix_ids, suffix_ids = tokenizer.encode(raw["prompt"]), tokenizer.encode(raw["suffix"])
    assert len(prefix_ids) > 1472 and len(suffix_ids) > 512
    assert first.prompt == tokenizer.decode(prefix_ids[-1472:]) and raw["prompt"].endswith(first.prompt)
    assert first.suffix == tokenizer.decode(suffix_ids[:512]) and raw["suffix"].startswith(first.suffix)
    assert problems[1].prompt == hm_fim_file[1]["prompt"] and problems[1].suffix == hm_fim_file[1]["suffix"]
    assert all(p.fim and p.max_new_tokens == 64 and p.stops == () and p.test == "" for p in problems)


def test_hm_fim_scores_qwens_first_line_per_language(hm_fim_file, sandbox):
    task = get("hm_fim")
    problems = task.problems(0, TaskContext())
    answers = {problems[0].task_id: "\n    total = n\n    x = 2",  # leading newline: the second line counts
               problems[1].task_id: " \n  n += 1;",  # leading " \n" too
               problems[2].task_id: "  \n  return s.length;",  # "  \n" is not skipped: the first line is empty
               problems[3].task_id: "    int x = 0;   \nint y;",
               problems[4].task_id: "    return 1;",
               problems[5].task_id: "return 3"}  # stripped: indentation does not count
    rows = score(task, problems, answers, sandbox)
    assert [r["exact_match"] for r in rows] == [True, True, False, True, False, True]
    assert [r["language"] for r in rows] == ["python", "javascript", "javascript", "java", "java", "python"]
    summary = summarize(task, rows)
    assert summary["exact_match"] == 4 / 6
    assert (summary["exact_match/python"], summary["exact_match/javascript"], summary["exact_match/java"]) == \
        (1.0, 0.5, 0.5)
    # the printed table and the run's metrics carry the per-language numbers (the report's three columns)
    assert "exact_match/python 1.000, exact_match/java 0.500, exact_match/javascript 0.500" in table([summary])
    assert run_values([summary]) == {"eval/hm_fim/exact_match": 4 / 6, "eval/hm_fim/exact_match/python": 1.0,
                                     "eval/hm_fim/exact_match/java": 0.5, "eval/hm_fim/exact_match/javascript": 0.5}
    oracle = summarize(task, score(task, problems, {p.task_id: task.oracle(p) for p in problems}, sandbox))
    assert oracle["exact_match"] == 1.0


def test_hm_fim_without_its_data_says_how_to_get_it(monkeypatch, tmp_path):
    """Unset, nothing asks the hub (it did before: a download at run time the user never asked for); the error
    says how to get the file. HM_FIM_DATA=hub opts in, and offline says the hub could not give it."""
    import huggingface_hub
    from huggingface_hub import constants

    asked = []
    real_download = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: asked.append(a) or real_download(*a, **k))
    monkeypatch.delenv(hm_fim.ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as offline machines are
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    with pytest.raises(TaskError, match=r"HM_FIM_DATA is unset.*hf download bigcode/santacoder-fim-task"):
        load_tasks(["hm_fim"])
    assert asked == []
    monkeypatch.setenv(hm_fim.ENV, hm_fim.HUB)
    with pytest.raises(TaskError, match="HM_FIM_DATA=hub but the hub could not give"):
        load_tasks(["hm_fim"])
    assert asked == [(hm_fim.HUB_REPO, hm_fim.HUB_FILE)]  # control: the opt-in does ask
    monkeypatch.setenv(hm_fim.ENV, str(tmp_path / "absent.parquet"))
    with pytest.raises(DataFileError, match="cannot read .*HM_FIM_DATA"):
        load_tasks(["hm_fim"])
    wrong = tmp_path / "wrong.parquet"
    wrong.write_bytes(b"PAR1 not the release")
    monkeypatch.setenv(hm_fim.ENV, str(wrong))
    with pytest.raises(DataFileError, match="sha256"):
        load_tasks(["hm_fim"])
