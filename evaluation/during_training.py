"""Evaluation tasks during training (train.eval_tasks): every train.eval_tasks_interval steps the model being
trained, in memory and in its training layout, decodes the first train.eval_tasks_limit problems of each task
greedily; global rank 0 scores them in the sandbox and the run logs the summary at that step under the keys
launch/evaluate.py uses (evaluation.run_log.run_values: eval/TASK/METRIC), rows in RUN/eval/step_N.jsonl.

Where it lives: layers point down (launch -> evaluation -> train), so train/ imports nothing of evaluation/.
launch/pretrain.py builds a TaskEvaluation before the process group exists (an unknown task name or a refused
sandbox ends the run in seconds with one error) and hands it to train.loop.run, which calls it after each step
and logs what it returns.

One decoding path with launch/evaluate.py --checkpoint: evaluation.generate.model_decoder around the DDP
chunks' modules (KV cache at PP1, the pipeline schedule under PP), the same Completer batching (16 problems),
the same sandbox defaults (10 s and 1 GiB per program); so the completions equal those of launch/evaluate.py
on the checkpoint saved at that step (tests/test_train_eval_tasks.py). Sequence parallelism is switched off
for the decode (prompts have arbitrary lengths, SP splits the sequence over TP ranks) and back on after; its
layers hold whole weights either way. CP > 1, VPP > 1 and FP8 are refused by recipes.validate (eval-tasks).

Training is not disturbed: no gradient and no optimizer state is touched, the random states (torch's and
megatron's tracker) are put back, the chunks return to train mode; the loss curve equals a run without it.
Every rank decodes (a data-parallel replica repeats its group's work); only rank 0 runs programs.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, List

import torch

from evaluation.generate import Completer, model_decoder
from evaluation.harness import evaluate
from evaluation.run_log import run_values
from evaluation.sandbox import Limits, Sandbox
from evaluation.tasks import load_tasks, select, skip_notice
from evaluation.tasks.base import TaskContext
from recipes.schema import Recipe


SEQUENCE_PARALLEL_FLAGS = ("sequence_parallel", "scatter_to_sequence_parallel", "reduce_scatter_embeddings")


@contextlib.contextmanager
def sequence_parallel_off(chunks: list):
    """Sequence parallelism off inside the block, each flag restored after: the module attributes megatron's
    layers read in forward (the list megatron.core.transformer.utils.set_model_to_sequence_parallel switches for
    its own inference, which sets them back to one value rather than to what each was) and the shared
    TransformerConfig's (embedding scatter, pipeline p2p shapes)."""
    modules = [m for chunk in chunks for m in chunk.modules()]
    saved = [(m, flag, getattr(m, flag)) for m in modules for flag in SEQUENCE_PARALLEL_FLAGS if hasattr(m, flag)]
    configs = {id(m.config): m.config for m in modules if hasattr(m, "config")}
    saved += [(config, "sequence_parallel", config.sequence_parallel) for config in configs.values()]
    try:
        for holder, flag, _ in saved:
            setattr(holder, flag, False)
        yield
    finally:
        for holder, flag, value in saved:
            setattr(holder, flag, value)


@contextlib.contextmanager
def random_states_kept():
    """torch's CPU and CUDA generators and megatron's tracker (dropout) as they were before the block."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    tracker = get_cuda_rng_tracker().get_states()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        get_cuda_rng_tracker().set_states(tracker)


class TaskEvaluation:
    """train.loop's step evaluation: `(trainer, step) -> {"eval/TASK/METRIC": value}` on rank 0 at the cadence,
    {} otherwise."""

    def __init__(self, recipe: Recipe):
        train = recipe.train
        sources = recipe.data.sources
        context = TaskContext(sources[0].prefix if sources else "", recipe.data.split)  # fim_heldout's data
        chosen, skipped = select(",".join(train.eval_tasks))  # `paper` leaves out what cannot run here
        if skipped and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: train.eval_tasks: skipped {skip_notice(skipped)}", flush=True)
        self.tasks = load_tasks(chosen, train.eval_tasks_limit, context)
        self.interval = train.eval_tasks_interval or train.eval_interval
        self.max_new_tokens = train.eval_tasks_max_new_tokens
        self.run_dir = Path(recipe.run.dir)
        self.max_length = recipe.model_shape().max_position_embeddings
        self.sandbox = Sandbox(Limits(), hide=[self.run_dir])  # probed on every rank: a refusal stops them alike

    def __call__(self, trainer, step: int) -> Dict[str, float]:
        if step % self.interval:
            return {}
        trainer.sync_params()  # with overlap_param_gather, other ranks' shards are gathered only now
        modules = [chunk.module for chunk in trainer.model]  # inside DDP: the GPTModel a checkpoint holds
        try:
            with torch.no_grad(), random_states_kept(), sequence_parallel_off(modules):
                for module in modules:
                    module.eval()
                return self._evaluate(modules, step)
        finally:
            for module in modules:
                module.train()

    def _evaluate(self, modules: List, step: int) -> Dict[str, float]:
        complete = Completer(model_decoder(modules, self.max_length), self.max_new_tokens)
        if torch.distributed.get_rank() != 0:  # every rank takes part in each forward pass; rank 0 scores
            for task, problems in self.tasks.items():
                complete(task, problems)
            return {}
        output = self.run_dir / "eval" / f"step_{step}.jsonl"
        return run_values(evaluate(self.tasks, complete, self.sandbox, output))


def task_evaluations(recipe: Recipe) -> list:
    """The step evaluations train.loop.run takes for `recipe`: [TaskEvaluation] when train.eval_tasks is set."""
    return [TaskEvaluation(recipe)] if recipe.train.eval_tasks else []
