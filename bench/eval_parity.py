"""Our scores against the official scorers, per task, on the same completions: fim_singleline vs OpenAI's
human-eval-infilling, cruxeval_input_cot / cruxeval_output_cot vs CRUXEval's evaluation (and the verdicts
Qwen published for its own models' generations), hm_fim vs Qwen's fim-bench scoring (and its prompt builder).

    python bench/eval_parity.py --human-eval-infilling ../human-eval-infilling --cruxeval ../cruxeval \\
        --qwen ../Qwen2.5-Coder [--hm-fim train.parquet] [--output bench/eval_parity.json]

Each checkout's official code runs from a temporary copy (human-eval-infilling's commented-out exec line
enabled, as its README instructs; Qwen's vllm/rich/fuzzywuzzy imports stubbed: scoring does not use them).
Completions with real failures:
- fim_singleline: the canonical line, the line without its newline, the next task's line, a flipped operator
  or constant (4 x 1,033);
- CRUXEval: the generations Qwen2.5-Coder-1.5B and -7B base published (qwencoder-eval/base/outptus), raw text
  after the prompt (4 x 800): our extraction vs theirs, our verdict vs CRUXEval's scorer vs the published one;
- hm_fim: the canonical line, with a leading newline, with a leading " \\n", with a leading "  \\n" (Qwen's rule
  skips only the first two), followed by another line, after an empty first line, a flipped operator (7 x 4,792); and the prompt ids we build vs the ids of Qwen's prompt
  string under the Hugging Face Qwen2 tokenizer.
Writes per-task agreement counts and a replay sample (completions + official verdicts) that
tests/test_eval_parity.py re-scores in the suite.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evaluation.sandbox import Limits, Sandbox
from evaluation.tasks import cruxeval, fim_singleline, hm_fim

REPLAY_PER_SET = 40
FLIPS = [("==", "!="), ("!=", "=="), ("<=", "<"), (">=", ">"), (" < ", " <= "), (" > ", " >= "), (" + ", " - "),
         (" - ", " + "), ("True", "False"), ("False", "True"), ("0", "1"), ("1", "2")]
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
def fim_singleline_parity(official_repo: Path, scratch: Path, sandbox: Sandbox, workers: int) -> dict:
    package = checkout(official_repo, scratch / "human-eval-infilling")
    execution = package / "human_eval_infilling" / "execution.py"
    execution.write_text(execution.read_text().replace("#                     exec(check_program, exec_globals)",
                                                       "                    exec(check_program, exec_globals)"))
    sys.path.insert(0, str(package))
    from human_eval_infilling.execution import check_correctness

    records = fim_singleline.records()
    sets = {"canonical": [r["canonical_solution"] for r in records],
            "no_newline": [r["canonical_solution"].rstrip("\n") for r in records],
            "next_line": [records[(i + 1) % len(records)]["canonical_solution"] for i in range(len(records))],
            "flipped": [flip(r["canonical_solution"]) for r in records]}
    result = {}
    for name, completions in sets.items():
        with ThreadPoolExecutor(workers) as pool:  # as evaluate_functional_correctness runs it: 3 s per program
            official = list(pool.map(lambda pair: check_correctness(pair[0], pair[1], 3.0)["passed"],
                                     zip(records, completions)))
        ours = [o.passed for o in sandbox.run_all([r["prompt"] + c + r["suffix"] + fim_singleline.test_code(r)
                                                   for r, c in zip(records, completions)])]
        rows = [dict(task_id=r["task_id"], completion=c, official=o, ours=u)
                for r, c, o, u in zip(records, completions, official, ours)]
        result[name] = dict(summarize(rows), replay=[{k: r[k] for k in ("task_id", "completion", "official")}
                                                     for r in replay_sample(rows, len(result))])
        print("fim_singleline", name, {k: v for k, v in result[name].items() if k != "replay"}, flush=True)
    return result


# ------------------------------------------------------------------------------------------ CRUXEval
def cruxeval_parity(official_repo: Path, qwen: Path, scratch: Path, workers: int) -> dict:
    code = checkout(official_repo, scratch / "cruxeval")
    sys.path.insert(0, str(code / "evaluation"))
    from utils_general import evaluate_score

    records = cruxeval.records()
    result = {}
    for mode in ("input", "output"):
        sandbox = Sandbox(Limits(timeout_s=cruxeval.TIMEOUT_S), workers=workers)
        for model in ("1.5b", "7b"):
            folder = QWEN_OUTPUTS.format(model=model, mode=mode)
            raw = json.loads(git_show(qwen, folder + "completion_raw.json"))
            extracted = json.loads(git_show(qwen, folder + "completion.json"))
            published = json.loads(git_show(qwen, folder + "completion_scored.json"))["raw_scored_generations"]
            rows = []
            for record in records:
                text = raw[record["id"]][0]
                prompt = cruxeval.prompt(record, mode)
                rows.append(dict(task_id=record["id"], prompt_equal=text.startswith(prompt),
                                 generation=text[len(prompt):], theirs=extracted[record["id"]][0],
                                 published=published[record["id"]][0]))
            for row in rows:
                row["answer"] = cruxeval.extract(row["generation"], mode)
            references = [(r["code"], r["input"], r["output"]) for r in records]
            with ThreadPoolExecutor(workers) as pool:
                official = list(pool.map(lambda args: evaluate_score(args)[0],
                                         [([row["theirs"]], ref, mode) for row, ref in zip(rows, references)]))
            programs = [cruxeval.check_program(r, row["answer"], mode) for r, row in zip(records, rows)]
            outcomes = iter(sandbox.run_all([p for p in programs if p is not None]))
            for row, program, verdict in zip(rows, programs, official):
                row["official"], row["ours"] = verdict, program is not None and next(outcomes).passed
            name = f"{mode}-cot/{model}"
            result[name] = dict(summarize(rows), prompts_equal=sum(r["prompt_equal"] for r in rows),
                                extraction_equal=sum(r["answer"] == r["theirs"] for r in rows),
                                published_equal=sum(r["published"] == r["official"] for r in rows),
                                replay=[{k: r[k] for k in ("task_id", "generation", "theirs", "official")}
                                        for r in replay_sample(rows, len(result))])
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


def hm_fim_parity(qwen: Path, parquet: Path, scratch: Path) -> dict:
    from transformers import AutoTokenizer

    from data.hf_export import export_hf_tokenizer
    from data.tokenizer import SPECIAL_TOKENS, load_tokenizer

    official = qwen_fim_bench(qwen, scratch)
    rows = hm_fim.records(parquet)
    hf = AutoTokenizer.from_pretrained(str(export_hf_tokenizer(scratch / "hf_tokenizer")))
    ours_tokenizer = load_tokenizer("qwen2.5")
    args = types.SimpleNamespace(max_seq_length=hm_fim.MAX_SEQ_LENGTH, gen_length=hm_fim.GEN_LENGTH,
                                 right_context_length=hm_fim.RIGHT_CONTEXT)
    prompt_equal = 0
    for row in rows:
        text = official.prepare_prompt(hf, "line_completion", "codelm_leftright_context", "Qwen2.5-Coder-7B",
                                       row["prompt"], row["suffix"], args=args)
        prefix, suffix = hm_fim.truncated_context(ours_tokenizer, row["prompt"], row["suffix"])
        ours = [SPECIAL_TOKENS["<|fim_prefix|>"], *ours_tokenizer.encode(prefix), SPECIAL_TOKENS["<|fim_suffix|>"],
                *ours_tokenizer.encode(suffix), SPECIAL_TOKENS["<|fim_middle|>"]]
        prompt_equal += hf(text)["input_ids"] == ours
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
        scored = [dict(task_id=f"{r['language']}/{r['name']}", completion=c, official=o,
                       ours=hm_fim.exact_match(c, r["canonical_solution"]), canonical=r["canonical_solution"])
                  for r, c, o in zip(rows, completions, verdicts)]
        result[name] = dict(summarize(scored), replay=[{k: r[k] for k in ("task_id", "completion", "canonical",
                                                                           "official")}
                                                       for r in replay_sample(scored, len(result))])
        print("hm_fim", name, {k: v for k, v in result[name].items() if k != "replay"}, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--human-eval-infilling", type=Path, required=True)
    parser.add_argument("--cruxeval", type=Path, required=True)
    parser.add_argument("--qwen", type=Path, required=True, help="QwenLM/Qwen2.5-Coder checkout")
    parser.add_argument("--hm-fim", type=Path, help="santacoder-fim-task parquet (default: the one in --qwen)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("eval_parity.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-parity-") as scratch:
        scratch = Path(scratch)
        parquet = args.hm_fim or scratch / "train.parquet"
        if not args.hm_fim:
            parquet.write_bytes(git_show(args.qwen, "qwencoder-eval/base/benchmarks/fim-bench/hm_fim/data/train.parquet"))
        report = {"hm_fim": hm_fim_parity(args.qwen, parquet, scratch),
                  "cruxeval": cruxeval_parity(args.cruxeval, args.qwen, scratch, args.workers),
                  "fim_singleline": fim_singleline_parity(args.human_eval_infilling, scratch,
                                                          Sandbox(workers=args.workers), args.workers)}
        shutil.rmtree(scratch / "qwen", ignore_errors=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
