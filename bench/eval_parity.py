"""Our scores against the official scorers, per task, on the same completions: fim_singleline vs OpenAI's
human-eval-infilling, cruxeval_input_cot / cruxeval_output_cot vs CRUXEval's evaluation (and the verdicts
Qwen published for its own models' generations), hm_fim vs Qwen's fim-bench scoring (and its prompt builder).

    python bench/eval_parity.py --human-eval-infilling ../human-eval-infilling --cruxeval ../cruxeval \\
        --qwen ../Qwen2.5-Coder [--hm-fim train.parquet] [--stride N] [--output bench/eval_parity.json]

The checked-in bench/eval_parity.json was made with --stride 4 (every 4th fim_singleline and CRUXEval problem:
each official program starts its own processes, and the shared 2-core machine ran ~4 s per program under load);
hm_fim, which executes nothing, is compared on all 4,792 rows.

Ours is the product path: the task's problems, evaluation.harness.score and the sandbox (10 s per program;
human-eval-infilling's scorer gets the same through its `timeout` argument, whose default of 3 s timed out a
canonical solution on the loaded machine; CRUXEval's fixes 3 s). Each checkout's
official code runs from a temporary copy (human-eval-infilling's commented-out exec line enabled, as its README
instructs; Qwen's vllm/rich/fuzzywuzzy imports stubbed: its scoring does not use them). Completions with real
failures:
- fim_singleline: the canonical line, the line without its newline, the next task's line, a flipped operator
  or constant (4 x 1,033 / stride);
- CRUXEval: the generations Qwen2.5-Coder-1.5B and -7B base published (qwencoder-eval/base/outptus), raw text
  after the prompt (4 x 800 / stride): our prompt vs theirs, our extraction vs theirs, our verdict vs CRUXEval's
  scorer run here on their extraction, and that vs the verdict they published (listed where it differs);
- hm_fim: the canonical line; with a leading "\\n", " \\n" or "  \\n" (Qwen's rule skips only the first two);
  followed by the next line; after an empty first line; a flipped operator (7 x 4,792); and our prompt ids vs
  the ids of Qwen's prompt string under the Hugging Face Qwen2 tokenizer.
Writes per-set agreement counts and a replay sample (completions + official verdicts) that
tests/test_eval_parity.py re-scores in the suite. Qwen's generations are not written, only their sha256 and that of
their extracted answer beside the verdicts: Qwen's repository carries no licence (the checked-in file's CRUXEval
rows were converted so from this script's earlier output, which held the text; the counts are that run's).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evaluation.harness import score
from evaluation.sandbox import Sandbox
from evaluation.tasks import cruxeval, get, hm_fim
from evaluation.tasks.base import TaskContext

REPLAY_PER_SET = 40
FLIPS = [("==", "!="), ("!=", "=="), ("<=", "<"), (">=", ">"), (" < ", " <= "), (" > ", " >= "), (" + ", " - "),
         (" - ", " + "), ("True", "False"), ("False", "True"), ("0", "1"), ("1", "2")]
SECTIONS = ("cruxeval", "fim_singleline", "hm_fim")
QWEN_HM_FIM = "qwencoder-eval/base/benchmarks/fim-bench/hm_fim/data/train.parquet"
QWEN_OUTPUTS = "qwencoder-eval/base/outptus/qwen2.5-coder/{model}-base/cruxeval/{mode}-cot/"


def git_show(repo: Path, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True).stdout


def checkout(repo: Path, into: Path, *paths: str) -> Path:
    """The repository's files at HEAD (all, or those under `paths`) under `into`: bare mirror or work tree alike."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", *paths], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def flip(line: str) -> str:
    for old, new in FLIPS:
        if old in line:
            return line.replace(old, new, 1)
    return line[:len(line) - len(line.lstrip())] + "pass\n"


def replay_sample(rows: list, seed: int) -> list:
    """Every disagreement, every row of a small set, else REPLAY_PER_SET rows with passes and failures."""
    disagreeing = [r for r in rows if r["ours"] != r["official"]]
    rng = random.Random(seed)
    passing = [r for r in rows if r["official"]]
    failing = [r for r in rows if not r["official"]]
    half = REPLAY_PER_SET // 2
    chosen = disagreeing + rng.sample(passing, min(half, len(passing))) + rng.sample(failing, min(half, len(failing)))
    return sorted({id(r): r for r in chosen}.values(), key=lambda r: rows.index(r))


def summarize(rows: list) -> dict:
    return {"completions": len(rows), "official_passed": sum(r["official"] for r in rows),
            "ours_passed": sum(r["ours"] for r in rows), "disagree": sum(r["ours"] != r["official"] for r in rows)}


# ------------------------------------------------------------------------------------------ fim_singleline
def fim_singleline_parity(official_repo: Path, scratch: Path, sandbox: Sandbox, workers: int, stride: int) -> dict:
    package = checkout(official_repo, scratch / "human-eval-infilling", "human_eval_infilling",
                       "data/HumanEval-SingleLineInfilling.jsonl.gz")
    execution = package / "human_eval_infilling" / "execution.py"
    execution.write_text(execution.read_text().replace("#                     exec(check_program, exec_globals)",
                                                       "                    exec(check_program, exec_globals)"))
    sys.path.insert(0, str(package))
    from human_eval_infilling.data import read_problems

    from human_eval_infilling.execution import check_correctness

    official_problems = read_problems("single-line")  # the package's own copy of the data
    task = get("fim_singleline")
    problems = task.problems(0, TaskContext())[::stride]
    timeout = sandbox.limits.timeout_s  # the official `timeout` argument (default 3 s) set to the sandbox's limit
    references = [p.reference for p in problems]
    sets = {"canonical": references, "no_newline": [r.rstrip("\n") for r in references],
            "next_line": references[1:] + references[:1], "flipped": [flip(r) for r in references]}
    result = {"stride": stride}
    for name, completions in sets.items():
        with ThreadPoolExecutor(workers) as pool:  # as evaluate_functional_correctness runs it
            official = list(pool.map(lambda pair: check_correctness(*pair, timeout)["passed"],
                                     [(official_problems[p.task_id], c) for p, c in zip(problems, completions)]))
        rows = score(task, problems, {p.task_id: c for p, c in zip(problems, completions)}, sandbox)
        compared = [dict(task_id=p.task_id, completion=c, official=o, ours=r["passed"])
                    for p, c, o, r in zip(problems, completions, official, rows)]
        result[name] = dict(summarize(compared), replay=[{k: r[k] for k in ("task_id", "completion", "official")}
                                                         for r in replay_sample(compared, len(result))])
        print("fim_singleline", name, {k: v for k, v in result[name].items() if k != "replay"}, flush=True)
    return result


# ------------------------------------------------------------------------------------------ CRUXEval
def cruxeval_parity(official_repo: Path, qwen: Path, scratch: Path, sandbox: Sandbox, workers: int,
                    stride: int) -> dict:
    code = checkout(official_repo, scratch / "cruxeval", "evaluation")
    sys.path.insert(0, str(code / "evaluation"))
    from utils_general import evaluate_score

    records = cruxeval.by_id()
    result = {"stride": stride}
    for mode in ("input", "output"):
        task = get(f"cruxeval_{mode}_cot")
        problems = task.problems(0, TaskContext())[::stride]
        references = [(records[p.task_id]["code"], records[p.task_id]["input"], records[p.task_id]["output"])
                      for p in problems]
        for model in ("1.5b", "7b"):
            folder = QWEN_OUTPUTS.format(model=model, mode=mode)
            raw = json.loads(git_show(qwen, folder + "completion_raw.json"))
            theirs = json.loads(git_show(qwen, folder + "completion.json"))
            published = json.loads(git_show(qwen, folder + "completion_scored.json"))["raw_scored_generations"]
            texts = [raw[p.task_id][0] for p in problems]
            generations = {p.task_id: t[len(p.prompt):] for p, t in zip(problems, texts)}
            with ThreadPoolExecutor(workers) as pool:
                official = list(pool.map(lambda args: evaluate_score(args)[0],
                                         [([theirs[p.task_id][0]], reference, mode)
                                          for p, reference in zip(problems, references)]))
            rows = score(task, problems, generations, sandbox)
            compared = [dict(task_id=p.task_id, prompt_sha256=sha256(t[:len(p.prompt)]),
                             prompt_equal=t.startswith(p.prompt), generation=generations[p.task_id],
                             theirs=theirs[p.task_id][0], answer=r["answer"], published=published[p.task_id][0],
                             official=o, ours=r["passed"])
                        for p, t, o, r in zip(problems, texts, official, rows)]
            name = f"{mode}-cot/{model}"
            result[name] = dict(summarize(compared), prompts_equal=sum(r["prompt_equal"] for r in compared),
                                extraction_equal=sum(r["answer"] == r["theirs"] for r in compared),
                                published_equal=sum(r["published"] == r["official"] for r in compared),
                                published_differs=[{k: r[k] for k in ("task_id", "official", "published")}
                                                   for r in compared if r["published"] != r["official"]],
                                replay=[dict(task_id=r["task_id"], prompt_sha256=r["prompt_sha256"],
                                             generation_sha256=sha256(r["generation"]),
                                             answer_sha256=sha256(r["theirs"]), official=r["official"])
                                        for r in replay_sample(compared, len(result))])
            print("cruxeval", name, {k: v for k, v in result[name].items() if k != "replay"}, flush=True)
    return result


# ------------------------------------------------------------------------------------------ hm_fim
def qwen_fim_bench(qwen: Path, scratch: Path) -> types.ModuleType:
    """Qwen's hm_fim/humaneval_fim.py imported from a copy, with the inference-only imports stubbed."""
    bench = "qwencoder-eval/base/benchmarks/fim-bench"
    root = checkout(qwen, scratch / "qwen", f"{bench}/utils.py", f"{bench}/hm_fim/humaneval_fim.py") / bench
    for name in ("vllm", "rich", "rich.table", "fuzzywuzzy"):
        stub = types.ModuleType(name)
        stub.LLM = stub.SamplingParams = stub.Table = object
        stub.print = print
        stub.fuzz = types.SimpleNamespace(ratio=lambda a, b: 0)  # edit similarity: not compared here
        sys.modules.setdefault(name, stub)
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root / "hm_fim"))
    import humaneval_fim  # noqa: E402  (Qwen's module)
    import utils  # noqa: E402  (Qwen's fim-bench/utils.py: prepare_prompt)

    humaneval_fim.prepare_prompt = utils.prepare_prompt
    return humaneval_fim


def hm_fim_parity(qwen: Path, parquet: Path, scratch: Path, sandbox: Sandbox) -> dict:
    from transformers import AutoTokenizer

    from data.hf_export import export_hf_tokenizer
    from data.tokenizer import load_tokenizer
    from evaluation.generate import prompt_ids

    official = qwen_fim_bench(qwen, scratch)
    os.environ[hm_fim.ENV] = str(parquet)
    task = get("hm_fim")
    problems, rows = task.problems(0, TaskContext()), hm_fim.records(parquet)
    hf = AutoTokenizer.from_pretrained(str(export_hf_tokenizer(scratch / "hf_tokenizer")))
    tokenizer = load_tokenizer("qwen2.5")
    args = types.SimpleNamespace(max_seq_length=hm_fim.MAX_SEQ_LENGTH, gen_length=hm_fim.GEN_LENGTH,
                                 right_context_length=hm_fim.RIGHT_CONTEXT)
    prompt_equal = sum(
        hf(official.prepare_prompt(hf, "line_completion", "codelm_leftright_context", "Qwen2.5-Coder-7B",
                                   row["prompt"], row["suffix"], args=args))["input_ids"] == prompt_ids(tokenizer, p)
        for row, p in zip(rows, problems))
    line = lambda r: r["canonical_solution"]  # noqa: E731
    sets = {"canonical": [line(r) for r in rows], "leading_newline": ["\n" + line(r) for r in rows],
            "leading_space_newline": [" \n" + line(r) for r in rows],
            "leading_two_spaces_newline": ["  \n" + line(r) for r in rows],
            "then_next_line": [line(r) + "\n" + r["suffix"].lstrip("\n").split("\n")[0] for r in rows],
            "empty_first_line": ["\n\n" + line(r) for r in rows], "flipped": [flip(line(r)) for r in rows]}
    result = {"prompt_ids_equal": prompt_equal, "rows": len(rows)}
    for name, completions in sets.items():
        verdicts = []
        for row, completion in zip(rows, completions):
            single = scratch / "one.jsonl"
            single.write_text(json.dumps(dict(row, model_gen=completion)) + "\n")
            verdicts.append(official.evaluate_results(str(single))["overall"]["exact_match_rate"] == 100)
        ours = score(task, problems, {p.task_id: c for p, c in zip(problems, completions)}, sandbox)
        compared = [dict(task_id=p.task_id, completion=c, canonical=p.reference, official=o, ours=r["exact_match"])
                    for p, c, o, r in zip(problems, completions, verdicts, ours)]
        result[name] = dict(summarize(compared), replay=[{k: r[k] for k in ("task_id", "completion", "canonical",
                                                                           "official")}
                                                         for r in replay_sample(compared, len(result))])
        print("hm_fim", name, {k: v for k, v in result[name].items() if k != "replay"}, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--human-eval-infilling", type=Path, required=True)
    parser.add_argument("--cruxeval", type=Path, required=True)
    parser.add_argument("--qwen", type=Path, required=True, help="QwenLM/Qwen2.5-Coder checkout")
    parser.add_argument("--hm-fim", type=Path, help="santacoder-fim-task parquet (default: the one in --qwen)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stride", type=int, default=1, help="fim_singleline, CRUXEval: every N-th problem")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="which comparisons to (re)run")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("eval_parity.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-parity-") as scratch:
        scratch = Path(scratch)
        parquet = args.hm_fim or scratch / "train.parquet"
        if not args.hm_fim:
            parquet.write_bytes(git_show(args.qwen, QWEN_HM_FIM))
        sandbox = Sandbox(workers=args.workers)
        run = {"cruxeval": lambda: cruxeval_parity(args.cruxeval, args.qwen, scratch, sandbox, args.workers,
                                                   args.stride),
               "fim_singleline": lambda: fim_singleline_parity(args.human_eval_infilling, scratch, sandbox,
                                                               args.workers, args.stride),
               "hm_fim": lambda: hm_fim_parity(args.qwen, parquet, scratch, sandbox)}
        report = json.loads(args.output.read_text()) if args.output.is_file() else {}
        for section in args.sections.split(","):
            report[section] = run[section]()
            args.output.write_text(json.dumps(report, indent=1) + "\n")  # kept section by section
            print(f"wrote {section} to {args.output}", flush=True)


if __name__ == "__main__":
    main()
