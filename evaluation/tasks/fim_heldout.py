"""fim_heldout: fill-in-the-middle exact match on the user's own prepared code, in documents training never saw.

Documents: the validation split of a data/prepare.py prefix under the training split string (megatron's
document ranges, data.datasets.split_bounds; default data.split "98,2,0"), in order. Each document's first
WINDOW tokens are cut exactly as training cuts a document (data.fim.rearrange: two character positions drawn
uniformly, prefix/middle/suffix tokenized separately, PSM), the draws seeded by the document's index
(data.fim.sample_rng), so the same prefix gives the same tasks on every run. The prompt is everything up to
and including <|fim_middle|> (the training sample's own ids), the reference the middle; the model decodes
greedily until end-of-text (how a training sample's middle ends), at most len(middle) + 16 tokens, and the
score is exact match of the stripped text. No tests, nothing executed.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from evaluation.problem import Problem
from evaluation.tasks.base import Task, TaskContext, TaskError

WINDOW = 512  # tokens of each document (training windows are seq_length + 1: 8,193 for file-level recipes)
VALIDATION = 1  # megatron's split index of "valid"
SLACK_TOKENS = 16
DOCUMENTS = 100  # without --limit: the first 100 validation documents


def fim_heldout(prefix: str, split: str, documents: int) -> List[Problem]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data.config import DataConfig
    from data.datasets import split_bounds
    from data.fim import FIMSpec, rearrange, sample_rng
    from data.tokenizer import load_tokenizer

    split = split or DataConfig.split
    dataset = IndexedDataset(prefix)
    bounds = split_bounds(split, len(dataset))[VALIDATION]
    if bounds is None or bounds[0] == bounds[1]:
        raise TaskError(f"{prefix}: split {split!r} leaves no validation documents out of {len(dataset)}; "
                         "pass the training run's data.split with --split, e.g. --split 90,10,0")
    spec, tokenizer = FIMSpec(rate=1.0, spm_rate=0.0), load_tokenizer("qwen2.5")
    problems = []
    for index in range(bounds[0], bounds[1]):
        tokens = np.asarray(dataset[index])
        region = tokens[tokens != spec.eod_id][:WINDOW]
        _, _, cut1, cut2 = sample_rng(0, VALIDATION, index).random(4)  # training's four draws per document
        sample = rearrange(region, False, cut1, cut2, spec, tokenizer) if len(region) else None
        if sample is None:
            continue  # too short, undecodable or holding special tokens: training leaves these as they are too
        middle_at = int(np.flatnonzero(sample == spec.middle_id)[0])
        suffix_at = int(np.flatnonzero(sample == spec.suffix_id)[0])
        middle = sample[middle_at + 1:]
        middle = middle[middle != spec.pad_id]
        problems.append(Problem(
            f"fim_heldout/{index}", tokenizer.decode(sample[1:suffix_at]), tokenizer.decode(middle), "",
            suffix=tokenizer.decode(sample[suffix_at + 1:middle_at]), fim=True, stops=(),
            max_new_tokens=len(middle) + SLACK_TOKENS, ids=tuple(int(t) for t in sample[:middle_at + 1])))
        if len(problems) == documents:
            break
    return problems


class FIMHeldout(Task):
    name, metrics = "fim_heldout", ("pass@1", "exact_match")  # pass@1 is the exact match: nothing runs
    benchmark = False  # the user's own validation documents

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        if not context.data:
            raise TaskError("fim_heldout needs --data PREFIX (the output prefix of data/prepare.py)")
        if not Path(context.data + ".idx").is_file() or not Path(context.data + ".bin").is_file():
            raise TaskError(f"fim_heldout: no prepared data at {context.data} ({context.data}.idx/.bin missing): "
                            "give --data the output prefix of data/prepare.py")
        return fim_heldout(context.data, context.split, limit or DOCUMENTS)

    def verdict(self, problem: Problem, completion: str, outcome) -> dict:
        exact = completion.strip() == problem.reference.strip()
        return dict(status="passed" if exact else "mismatch", passed=exact, exact_match=exact)


TASKS = [FIMHeldout()]
