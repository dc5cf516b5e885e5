"""Code-ability evaluation: HumanEval pass@1 and single-line infilling (exact match + pass@1), sandboxed.

    python launch/evaluate.py --checkpoint runs/tiny-file --tasks humaneval,humaneval_fim --output eval.jsonl
    torchrun --nproc_per_node=2 launch/evaluate.py --checkpoint runs/tiny-file     # at the run's TP2 layout
    python launch/evaluate.py --hf hf/7b-file --limit 20                              # a Hugging Face directory
    python launch/evaluate.py --oracle                                                # canonical solutions
    python launch/evaluate.py --completions samples.jsonl   # {"task_id", "completion"} per line, no model
    python launch/evaluate.py --checkpoint runs/tiny-file --tasks fim_heldout --data data_cache/stdlib

Model-written programs run in evaluation.sandbox (own network/mount/PID namespaces, uid nobody, empty
environment, private /tmp, time and memory limits); where the kernel refuses, nothing runs and the error says
how to allow it. Given a run directory, the summary is also appended to its metrics.jsonl and W&B run.
"""
import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="run dir, checkpoints/ dir or checkpoints/step_* dir")
    source.add_argument("--hf", type=Path, help="Hugging Face directory (config.json + safetensors)")
    source.add_argument("--oracle", action="store_true", help="answer with the canonical solutions")
    source.add_argument("--completions", type=Path, help="JSONL of {task_id, completion} to score")
    parser.add_argument("--pp", type=int, help="--checkpoint: pipeline stages, no KV cache (default: the run's or 1)")
    parser.add_argument("--tasks", default="humaneval,humaneval_fim",
                        help="comma-separated: humaneval, humaneval_fim, fim_heldout (default: the first two)")
    parser.add_argument("--data", default="", help="fim_heldout: data/prepare.py output prefix")
    parser.add_argument("--split", default="", help="fim_heldout: the run's data.split (default 98,2,0)")
    parser.add_argument("--limit", type=int, default=0, help="first N problems of each task (default: all)")
    parser.add_argument("--output", type=Path, help="JSONL, one row per problem")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 512 (humaneval), 64 (fim)")
    parser.add_argument("--batch-size", type=int, help="problems decoded together (default 16)")
    parser.add_argument("--workers", type=int, default=None, help="parallel programs (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default 10)")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run model-written code WITHOUT namespace isolation (you accept the risk)")
    return parser.parse_args(argv)


def model_completer(args):
    from evaluation.generate import Completer, hf_decoder, megatron_decoder

    if args.hf:
        return Completer(hf_decoder(args.hf), args.max_new_tokens, args.batch_size, log=print), 0
    import torch

    from train.checkpoint import CheckpointError
    from train.distributed import init_process_group

    init_process_group()
    try:
        completer = Completer(megatron_decoder(args.checkpoint, args.pp), args.max_new_tokens, args.batch_size, log=print)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    return completer, torch.distributed.get_rank()


def main(argv=None) -> int:
    args = parse_args(argv)
    from evaluation.harness import CompletionsError, evaluate, read_completions, table
    from evaluation.run_log import log_summaries, run_dir_of
    from evaluation.sandbox import Limits, Sandbox, SandboxUnavailable
    from evaluation.tasks import load_tasks

    try:
        tasks = load_tasks([t for t in args.tasks.split(",") if t], args.limit, args.data, args.split)
        if args.unsafe_no_sandbox:
            print("WARNING: --unsafe-no-sandbox: model-written code runs with your network and files", flush=True)
        run_dir = args.checkpoint and run_dir_of(args.checkpoint)  # hidden even when a step dir is named
        hide = [p for p in (args.checkpoint, run_dir, args.hf, args.output and args.output.parent) if p]
        # probed on every rank before the model is built: a refusal stops all ranks alike
        sandbox = Sandbox(Limits(args.timeout, args.memory_mb), hide, args.workers, args.unsafe_no_sandbox)
        completer, rank = model_completer(args) if args.hf or args.checkpoint else (None, 0)
        if rank != 0:  # every rank takes part in each forward pass; rank 0 scores
            for task, problems in tasks.items():
                completer(task, problems)
            return 0
        if args.oracle:
            complete = lambda task, problems: {p.task_id: p.reference for p in problems}  # noqa: E731
        elif args.completions:
            given = read_completions(args.completions)
            complete = lambda task, problems: given  # noqa: E731
        else:
            complete = completer
        summaries = evaluate(tasks, complete, sandbox, args.output)
    except (CompletionsError, SandboxUnavailable, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(summaries))
    if args.checkpoint:
        log_summaries(args.checkpoint, summaries)
    print(json.dumps(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
