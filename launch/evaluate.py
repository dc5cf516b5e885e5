"""Code-ability evaluation of a checkpoint: the Qwen2.5-Coder base-model table's offline columns, sandboxed.

    python launch/evaluate.py --checkpoint runs/tiny-file --tasks humaneval,mbpp --output eval.jsonl
    torchrun --nproc_per_node=2 launch/evaluate.py --checkpoint runs/tiny-file --tasks paper  # TP2 layout
    python launch/evaluate.py --hf hf/7b-file --limit 20                              # a Hugging Face directory
    python launch/evaluate.py --oracle --tasks paper                                  # the reference answers
    python launch/evaluate.py --completions samples.jsonl   # {task_id, completion|solution|generation}, no model
    python launch/evaluate.py --checkpoint runs/tiny-file --tasks fim_heldout --data data_cache/stdlib

Model-written programs run in evaluation.sandbox (own namespaces, uid nobody, empty environment, private /tmp,
time and memory limits); where the kernel refuses, nothing runs and the error says how to allow it. Given a
run directory, the summary is also appended to its metrics.jsonl and W&B run (eval/TASK/METRIC).
"""
import argparse
import sys
from pathlib import Path

DEFAULT_TASKS = "humaneval,fim_singleline"


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number N >= 1 (the first N problems of each task)")
    return int(text)


def usage_error(message: str):
    print(f"error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
    from evaluation.tasks import PAPER, describe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"tasks (name, paper column, language):\n{describe()}")
    parser.error = usage_error
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="run dir, checkpoints/ dir or checkpoints/step_* dir")
    source.add_argument("--hf", type=Path, help="Hugging Face directory (config.json + safetensors)")
    source.add_argument("--oracle", action="store_true", help="answer with the reference solutions")
    source.add_argument("--completions", type=Path,
                        help="JSONL of {task_id, completion | solution | generation} to score")
    parser.add_argument("--pp", type=int, help="--checkpoint: pipeline stages, no KV cache (default: the run's or 1)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help=f"comma-separated task names (below) or {PAPER} (default: {DEFAULT_TASKS})")
    parser.add_argument("--data", default="", help="fim_heldout: data/prepare.py output prefix")
    parser.add_argument("--split", default="", help="fim_heldout: the run's data.split (default 98,2,0)")
    parser.add_argument("--limit", type=positive, default=0, help="first N >= 1 problems of each task (default: all)")
    parser.add_argument("--output", type=Path, help="JSONL, one row per problem")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (512 for humaneval)")
    parser.add_argument("--batch-size", type=int, help="problems decoded together (default 16)")
    parser.add_argument("--workers", type=int, default=None, help="parallel programs (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default 10)")
    parser.add_argument("--memory-mb", type=int, default=1024,
                        help="memory per program, its children and compilers included (default 1024)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run model-written code WITHOUT namespace isolation (you accept the risk)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from evaluation.command import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
