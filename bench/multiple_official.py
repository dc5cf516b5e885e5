"""MultiPL-E verdicts, ours against the harness behind the Qwen2.5-Coder report's MultiPL-E columns, on the same
completions: ours = evaluation/tasks/multiple.py through the sandbox; theirs = QwenLM/Qwen2.5-Coder's
qwencoder-eval/base/benchmarks/multiple-eval (its stop-token cut `utils.cleanup_code`, program assembly
`process_humaneval_test` and runner `check_correctness`, imported from a checkout, not copied).

    git -C QWEN_REPO archive HEAD qwencoder-eval/base/benchmarks/multiple-eval | tar -x -C /tmp/qwen
    python bench/multiple_official.py --qwen /tmp/qwen/qwencoder-eval/base/benchmarks/multiple-eval \\
        [--samples bench/multiple_official_samples.jsonl] [--output verdicts.jsonl]

Samples: {"task", "task_id", "case", "completion"} per line, the model's output after the prompt. Their runner
executes programs unsandboxed as the calling user: give it trusted completions only (the checked-in samples
are hand-written). It needs Qwen's imports (fire, regex, numpy, tqdm). Prints one line per sample with both
verdicts and the count of disagreements.
"""
import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

from evaluation.sandbox import Limits, Sandbox
from evaluation.tasks import get
from evaluation.tasks.base import Answer, TaskContext

REPO = Path(__file__).resolve().parents[1]


def official(qwen: Path, language: str, problem, completion: str, timeout: float) -> str:
    """Their result string ("passed", "failed: ...", "timed out") for one completion."""
    sys.path.insert(0, str(qwen))
    cleanup = importlib.import_module("utils.utils").cleanup_code
    evaluation = importlib.import_module("human_eval.evaluation")
    execution = importlib.import_module("human_eval.execution")
    records = {r["task_id"]: r for r in map(json.loads, (qwen / "data" / f"humaneval-{language}.jsonl").open())}
    stops = next(iter(records.values()))["stop_tokens"]  # as their dataset class: the first record's
    generation = problem.prompt + "\n" + cleanup(completion, language, "humaneval", False, stops)
    sample = {"task_id": problem.task_id, "prompt": problem.prompt, "generation": generation}
    sample["test_code"] = evaluation.process_humaneval_test(sample, records, False, False, language)
    with tempfile.TemporaryDirectory(prefix="qwen-tmp-") as scratch:
        return execution.check_correctness(problem.task_id, sample, language, timeout, scratch)["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qwen", type=Path, required=True, help="the multiple-eval directory of a checkout")
    parser.add_argument("--samples", type=Path, default=REPO / "bench" / "multiple_official_samples.jsonl")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per program, both sides (theirs: 10, which also bounds g++ and tsc: too "
                             "short on a loaded machine)")
    args = parser.parse_args()
    sandbox, rows = Sandbox(Limits(timeout_s=args.timeout), workers=1), []
    for sample in map(json.loads, args.samples.read_text().splitlines()):
        task = get(sample["task"])
        problem = next(p for p in task.problems(0, TaskContext()) if p.task_id == sample["task_id"])
        _, head = task.head(problem, Answer(sample["completion"]))
        ours = sandbox.run(task.program(problem, head), task.language)
        theirs = official(args.qwen, task.language, problem, sample["completion"], args.timeout)
        row = dict(task=task.name, task_id=problem.task_id, case=sample["case"], ours=ours.status,
                   theirs=theirs.splitlines()[0][:80] if theirs else "", agree=ours.passed == (theirs == "passed"))
        rows.append(row)
        print(f"{row['task']:<14} {row['task_id']:<22} {row['case']:<20} ours {row['ours']:<14} "
              f"theirs {row['theirs'][:40]:<40} {'' if row['agree'] else 'DIFFERENT'}", flush=True)
    print(f"{sum(not r['agree'] for r in rows)} of {len(rows)} verdicts differ")
    if args.output:
        args.output.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
