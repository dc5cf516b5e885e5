"""Full oracle of both evaluation tasks (164 HumanEval + 1,033 single-line infilling programs) and the cost
of the sandbox: the same programs through evaluation.sandbox with namespaces, and without them
(unsafe mode: same interpreter, limits and workers) as the baseline, in the same run.

    python bench/eval_oracle.py [--workers N]

Prints pass@1 / exact match (must all be 1.000) and the wall time of each, with the ratio.
"""
import argparse
import time

from evaluation.harness import score, summarize
from evaluation.sandbox import Sandbox
from evaluation.tasks import get, load_tasks


def run(sandbox: Sandbox) -> tuple[list, float]:
    started = time.perf_counter()
    summaries = [summarize(name, score(name, problems, {p.task_id: get(name).oracle(p) for p in problems}, sandbox))
                 for name, problems in load_tasks(["humaneval", "humaneval_fim"]).items()]
    return summaries, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    sandboxed, seconds = run(Sandbox(workers=args.workers))
    _, baseline = run(Sandbox(workers=args.workers, unsafe=True))
    for summary in sandboxed:
        print(summary)
    print(f"sandboxed {seconds:.1f} s, without namespaces {baseline:.1f} s: {seconds / baseline:.2f}x")


if __name__ == "__main__":
    main()
