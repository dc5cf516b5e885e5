"""MultiPL-E verdicts, ours against the harness behind the Qwen2.5-Coder report's MultiPL-E columns, on the same
completions: ours = evaluation/tasks/multiple.py through the sandbox; theirs = QwenLM/Qwen2.5-Coder's
qwencoder-eval/base/benchmarks/multiple-eval (its stop-token cut `utils.cleanup_code`, program assembly
`process_humaneval_test` and runner `check_correctness`, imported from a checkout, not copied).

    git -C QWEN_REPO archive HEAD qwencoder-eval/base/benchmarks/multiple-eval | tar -x -C /tmp/qwen
    python bench/multiple_official.py --qwen /tmp/qwen/qwencoder-eval/base/benchmarks/multiple-eval \
        [--samples bench/multiple_official_samples.jsonl] [--output verdicts.jsonl]
    python bench/multiple_official.py --qwen ... --published QWEN_OUTPUTS/qwen2.5-coder/7b-base/multipl-e \
        --stride 8 --output bench/multiple_published_verdicts.jsonl

Samples: {"task", "task_id", "case", "completion"} per line, the model's output after the prompt. Their runner
executes programs unsandboxed as the calling user: give it trusted completions only (the checked-in samples
are hand-written). It needs Qwen's imports (fire, regex, numpy, tqdm). Prints one line per sample with both
verdicts and the count of disagreements.

--published takes real model outputs instead: the predictions Qwen published for its own base models
(qwencoder-eval/base/outptus/qwen2.5-coder/<model>-base/multipl-e in the same repository: `pred_<lang>_output.jsonl`,
whose `wholecode` is prompt + the raw model output, and `humaneval-<lang>-details.json`, the verdicts their run
gave). Every `--stride`-th problem of the seven report languages is scored by ours and by theirs here, and both
are compared with the published verdict. That repository carries no licence, so the rows keep each output's
sha256, not its text.
"""
import argparse
import hashlib
import importlib
import json
import sys
import tempfile
from pathlib import Path

from evaluation.sandbox import Limits, Sandbox
from evaluation.tasks import get
from evaluation.tasks.base import Answer, TaskContext

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = ("cpp", "cs", "java", "js", "php", "sh", "ts")  # the report's MultiPL-E columns, as Qwen names them


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


def published_samples(directory: Path, stride: int) -> list:
    """Every `stride`-th prediction per language from Qwen's published outputs, with the verdict their run gave."""
    samples = []
    for language in LANGUAGES:
        details = json.loads((directory / f"humaneval-{language}-details.json").read_text())
        predictions = (directory / f"pred_{language}_output.jsonl").read_text().splitlines()
        for record in map(json.loads, predictions[::stride]):
            assert record["wholecode"].startswith(record["prompt"]), record["task_id"]
            samples.append(dict(task=f"multiple_{language}", task_id=record["task_id"], case="published",
                                prompt=record["prompt"], completion=record["wholecode"][len(record["prompt"]):],
                                published=details[record["task_id"]][0][1]["passed"]))
    return samples


def compare(sample: dict, qwen: Path, sandbox: Sandbox, timeout: float) -> dict:
    task = get(sample["task"])
    problem = next(p for p in task.problems(0, TaskContext()) if p.task_id == sample["task_id"])
    _, head = task.head(problem, Answer(sample["completion"]))
    ours = sandbox.run(task.program(problem, head), task.language)
    theirs = official(qwen, task.language, problem, sample["completion"], timeout)
    row = dict(task=task.name, task_id=problem.task_id, case=sample["case"], ours=ours.status,
               theirs=theirs.splitlines()[0][:80] if theirs else "", agree=ours.passed == (theirs == "passed"))
    if "published" in sample:
        row.update(completion_sha256=hashlib.sha256(sample["completion"].encode()).hexdigest(),
                   prompt_equal=sample["prompt"] == problem.prompt, published=sample["published"],
                   agree_published=ours.passed == sample["published"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qwen", type=Path, required=True, help="the multiple-eval directory of a checkout")
    parser.add_argument("--samples", type=Path, default=REPO / "bench" / "multiple_official_samples.jsonl")
    parser.add_argument("--published", type=Path, help="a published multipl-e outputs directory (replaces --samples)")
    parser.add_argument("--stride", type=int, default=1, help="--published: every N-th problem per language")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per program, both sides (theirs: 10, which also bounds g++ and tsc: too "
                             "short on a loaded machine)")
    args = parser.parse_args()
    sandbox, rows = Sandbox(Limits(timeout_s=args.timeout), workers=1), []
    samples = (published_samples(args.published, args.stride) if args.published
               else list(map(json.loads, args.samples.read_text().splitlines())))
    for sample in samples:
        row = compare(sample, args.qwen, sandbox, args.timeout)
        rows.append(row)
        published = f" published {row['published']}" if "published" in row else ""
        print(f"{row['task']:<14} {row['task_id']:<22} {row['case']:<20} ours {row['ours']:<14} "
              f"theirs {row['theirs'][:40]:<40}{published} {'' if row['agree'] else 'DIFFERENT'}", flush=True)
        if args.output:  # written as it goes: a long run keeps what it scored
            args.output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{sum(not r['agree'] for r in rows)} of {len(rows)} verdicts differ")


if __name__ == "__main__":
    main()
