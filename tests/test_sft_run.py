"""SFT from an imported checkpoint: a random tiny transformers model is imported with hf_interop.convert.import_hf,
then `launch/pretrain.py +recipe=tiny stage=sft checkpoint.load=IMPORT` trains 2 steps on 2 ranks in tiny's SFT
layout (PP2) on a generated JSONL of conversations, packed several per row (data.packing, the default) and rendered
with Qwen's default system turn where a conversation has none.

The first logged loss is computed before any update, so it must equal transformers' loss on the same global batch,
rebuilt here through train.data_feed.DataFeed (i.e. data.sft), masked by that batch's loss_mask, with every
conversation of a packed row run through transformers ALONE (positions from 0, seeing nothing of its neighbours):
the per-token mean over the assistant tokens. That one number checks the import (a fresh init gives
~ln(151,680) = 11.93; the imported untied model, lm_head ~ N(0, 1/64), gives ~12.4), that the run trains on the
assistant-only mask (the mean over every non-padding label differs by far more than the tolerance) and that packing
leaks nothing between conversations at PP2 (transformers over whole rows, as if unpacked, differs by far more too).
Untied, as in tests/test_hf_interop_parallel.py: with tied random weights (embedding std 0.02) every logit is ~0
and any model scores ~11.93. Some conversations are cut at seq_length + 1 = 161 ids, and some rows hold several.
Measured: step-1 loss 12.2602040 vs transformers 12.2602044 (3.4e-8 relative); every label 12.3717983 (9e-3 away);
rows as one sequence 12.2608211 (5.1e-5 away, 50x the tolerance); rows held [2, 2, 1, 1] conversations.
~30 s on 2 idle cores.
"""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from data.tokenizer import EOD, IM_START, SPECIAL_TOKENS, load_tokenizer
from model.families import get_shape
from recipes.compose import compose_config, to_recipe
from tests.hf_reference import random_hf_model
from tests.run_helpers import FAST, run_pretrain, train_losses
from train.distributed import init_model_parallel
from hf_interop.convert import import_hf

TINY_SFT = ["+recipe=tiny", "stage=sft", "model.tied_embeddings=false"]
TRAIN = [*FAST, "train.seq_length=160", "train.train_iters=2", "train.eval_interval=0", "data.split='100,0,0'",
         "optimizer.warmup_iters=0", "checkpoint.save_interval=0", "logging.wandb=false", "logging.plots=false"]
TOLERANCE = 1e-6  # relative; fp32 model, sums in float64: measured 5e-9 to 4e-8
WORDS = ("list", "sort", "parse", "file", "json", "key", "value", "loop", "return", "error", "string", "count")


def conversations(n: int, seed: int = 3):
    rng = random.Random(seed)
    for i in range(n):
        question = f"How do I {' '.join(rng.choices(WORDS, k=rng.randint(2, 12)))} in Python? ({i})"
        lines = rng.randint(10, 14) if i % 4 == 1 else 1  # short ones share rows, long ones are cut
        body = "\n".join(f"    {rng.choice(WORDS)}_{j} = {rng.choice(WORDS)}({j})" for j in range(lines))
        messages = [{"role": "user", "content": question},
                    {"role": "assistant", "content": f"Like this:\n```python\ndef f():\n{body}\n```"}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "You are a concise coding assistant."})
        yield {"messages": messages}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("sft")
    chat = work / "chat.jsonl"
    chat.write_text("".join(json.dumps(c) + "\n" for c in conversations(40)))
    hf = random_hf_model(get_shape("tiny").shrink(tied_embeddings=False), seed=13)
    hf.save_pretrained(work / "hf")
    init_model_parallel()
    import_hf(work / "hf", work / "mcore", recipe=to_recipe(compose_config(TINY_SFT)))
    overrides = [*TINY_SFT, *TRAIN, f"checkpoint.load={work / 'mcore'}", f"run.dir={work / 'run'}",
                 f"data.sources=[{{name: chat, prefix: {chat}, weight: 1.0}}]"]
    completed = run_pretrain(2, overrides)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return dict(work=work, hf=hf, overrides=overrides, log=completed.stderr + completed.stdout)


def first_global_batch(overrides):
    from train.data_feed import DataFeed

    recipe = to_recipe(compose_config(overrides))
    init_model_parallel()  # one process: data-parallel size 1, as in the PP2 run (2 ranks = 2 stages)
    feed = DataFeed(recipe, num_chunks=1, consumed_samples=0)
    iterator = feed.train_iterators()[0]
    return [next(iterator) for _ in range(recipe.train.global_batch_size // recipe.train.micro_batch_size)]


def documents(micro):
    """(row, begin, end) of each conversation in a micro-batch: packed rows restart position ids at 0 for each."""
    for row, positions in enumerate(micro["position_ids"]):
        starts = torch.nonzero(positions == 0).flatten().tolist() + [len(positions)]
        for begin, end in zip(starts[:-1], starts[1:]):
            yield row, begin, end


def transformers_loss(hf, micro_batches, mask_of, alone: bool = True):
    """Per-token mean of transformers' loss under `mask_of`; alone: each conversation in its own forward."""
    total, count = 0.0, 0.0
    with torch.no_grad():
        for micro in micro_batches:
            pieces = documents(micro) if alone else ((row, 0, None) for row in range(len(micro["tokens"])))
            for row, begin, end in pieces:
                logits = hf(input_ids=micro["tokens"][row:row + 1, begin:end]).logits[0]
                losses = F.cross_entropy(logits, micro["labels"][row, begin:end], reduction="none")
                mask = mask_of(micro)[row, begin:end].float()
                total += float((losses * mask).sum())
                count += float(mask.sum())
    return total / count


def test_sft_run_starts_from_the_import_and_learns_assistant_tokens_only(sft_run):
    losses = train_losses(sft_run["work"] / "run")
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    batch = first_global_batch(sft_run["overrides"])
    tok = load_tokenizer()
    system = tok.encode("system")
    per_row = []
    for micro in batch:  # what carries loss is the answers (each starts "Like this:") and their <|im_end|>
        rows = {}
        for row, begin, end in documents(micro):
            tokens, labels = micro["tokens"][row, begin:end], micro["labels"][row, begin:end]
            if (tokens == SPECIAL_TOKENS[EOD]).all():
                continue  # the row's padding
            assert tokens[0] == SPECIAL_TOKENS[IM_START] and tokens[1:1 + len(system)].tolist() == system
            learnt = tok.decode(labels[micro["loss_mask"][row, begin:end].bool()])
            assert learnt.startswith("Like this:\n```python\ndef f():\n") and "How do I" not in learnt
            assert learnt.count("<|im_end|>") <= 1 and "<|im_start|>" not in learnt and "concise" not in learnt
            rows[row] = rows.get(row, 0) + 1
        per_row += rows.values()
    assert max(per_row) >= 2, f"no packed row in the first batch: {per_row}"
    assistant = transformers_loss(sft_run["hf"], batch, lambda m: m["loss_mask"])
    every_label = transformers_loss(sft_run["hf"], batch, lambda m: m["labels"] != SPECIAL_TOKENS[EOD])
    unpacked = transformers_loss(sft_run["hf"], batch, lambda m: m["loss_mask"], alone=False)
    first = losses[1]
    relative = abs(first - assistant) / assistant
    print(f"step-1 loss {first!r}, transformers on the assistant mask {assistant!r} (relative {relative:.1e}), "
          f"on every label {every_label:.7f}, rows as one sequence {unpacked:.7f}, conversations per row {per_row}")
    assert relative <= TOLERANCE
    assert abs(every_label - assistant) > 100 * TOLERANCE * assistant, "the mask would not be tested"
    assert abs(unpacked - assistant) > 10 * TOLERANCE * assistant, "packing would not be tested"
    assert abs(first - math.log(151_680)) > 0.2, "indistinguishable from a fresh init"
    assert "SFT data" in sft_run["log"] and "conversation(s) cut to 161 ids" in sft_run["log"]
