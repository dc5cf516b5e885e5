"""What launch/evaluate.py does with its arguments: load the tasks, build the sandbox and the answer source
(model, file or references), score, print the table, log to the run. Every user mistake ends in one
`error:` line and exit status 2; `--oracle` below 1.0 anywhere exits 1 (the harness disagrees with its own
references)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from evaluation.harness import CompletionsError, answers_for, evaluate, read_completions
from evaluation.report import table
from evaluation.run_log import log_summaries, run_dir_of
from evaluation.sandbox import Limits, Sandbox, SandboxUnavailable
from evaluation.tasks import get, load_tasks, select, skip_notice
from evaluation.tasks.base import TaskContext

PRIVATE_TMP = Path("/tmp").resolve()


def model_completer(args):
    from evaluation.generate import Completer, hf_decoder, megatron_decoder

    if args.hf:
        return Completer(hf_decoder(args.hf), args.max_new_tokens, args.batch_size, log=print), 0
    import torch

    from train.checkpoint import CheckpointError
    from train.distributed import init_process_group

    init_process_group()
    try:
        decode = megatron_decoder(args.checkpoint, args.pp)
        completer = Completer(decode, args.max_new_tokens, args.batch_size, log=print)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    return completer, torch.distributed.get_rank()


def run(args) -> int:
    try:
        chosen, skipped = select(args.tasks, args.oracle)
        tasks = load_tasks(chosen, args.limit, TaskContext(args.data, args.split))
        given = answers_for(read_completions(args.completions), tasks) if args.completions else None
        if args.unsafe_no_sandbox:
            print("WARNING: --unsafe-no-sandbox: model-written code runs with your network and files", flush=True)
        run_dir = args.checkpoint and run_dir_of(args.checkpoint)  # hidden even when a step dir is named
        # /tmp is the program's own private tmpfs already: hiding it (an --output file there) would leave none
        hide = [p for p in (args.checkpoint, run_dir, args.hf, args.output and args.output.parent)
                if p and Path(p).resolve() != PRIVATE_TMP]
        # probed on every rank before the model is built: a refusal stops all ranks alike
        sandbox = Sandbox(Limits(args.timeout, args.memory_mb), hide, args.workers, args.unsafe_no_sandbox)
        completer, rank = model_completer(args) if args.hf or args.checkpoint else (None, 0)
        if rank != 0:  # every rank takes part in each forward pass; rank 0 scores
            for task, problems in tasks.items():
                completer(task, problems)
            return 0
        if skipped:
            print(f"note: skipped {skip_notice(skipped)}", flush=True)
        if args.oracle:
            complete = lambda task, problems: {p.task_id: get(task).oracle(p) for p in problems}  # noqa: E731
        elif given is not None:
            complete = lambda task, problems: given[task]  # noqa: E731
        else:
            complete = completer
        summaries = evaluate(tasks, complete, sandbox, args.output)
    except (CompletionsError, SandboxUnavailable, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(summaries))
    if args.checkpoint:
        log_summaries(args.checkpoint, summaries)
    print(json.dumps(summaries))
    return oracle_failures(summaries) if args.oracle else 0


def oracle_failures(summaries) -> int:
    """1 with one line naming the metrics below 1.0 when the references do not score perfectly, else 0."""
    short = [f"{s['task']} {metric} {s[metric]:.4f}" for s in summaries for metric in get(s["task"]).metrics
             if s.get(metric, 1.0) < 1.0]  # a per-language metric is absent when --limit leaves no such row
    if short:
        print(f"error: the reference answers scored below 1.0: {', '.join(short)} (--output FILE keeps each "
              "program's status and output)", file=sys.stderr)
    return 1 if short else 0
