"""Full oracle of the offline evaluation tasks with reference answers (164 HumanEval, 1,033 single-line
infilling and 2 x 800 CRUXEval programs; hm_fim's 4,792 exact matches too when $HM_FIM_DATA names its file)
and the cost of the sandbox: the same programs through evaluation.sandbox with namespaces, and without them
(unsafe mode: same interpreter, limits and workers) as the baseline, in the same run.

    python bench/eval_oracle.py [--workers N]

Prints pass@1 / exact match (must all be 1.000) and the wall time of each, with the ratio.
"""
import argparse
import os
import time

from evaluation.harness import score, summarize
from evaluation.sandbox import Sandbox
from evaluation.tasks import get, hm_fim, load_tasks

TASKS = ["humaneval", "fim_singleline", "cruxeval_input_cot", "cruxeval_output_cot"]


def run(sandbox: Sandbox) -> tuple[list, float]:
    started = time.perf_counter()
    summaries = [summarize(name, score(name, problems, {p.task_id: get(name).oracle(p) for p in problems}, sandbox))
                 for name, problems in load_tasks(TASKS + (["hm_fim"] if os.environ.get(hm_fim.ENV) else [])).items()]
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
