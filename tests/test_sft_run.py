"""SFT from an imported checkpoint (issue 7, acceptance 4, SFT half): a random tiny transformers model is imported
with hf_interop.convert.import_hf, then `launch/pretrain.py +recipe=tiny stage=sft checkpoint.load=IMPORT` trains 2
steps on 2 ranks in tiny's SFT layout (PP2) on a generated JSONL of conversations.

The first logged loss is computed before any update, so it must equal transformers' loss on the same global batch,
rebuilt here through train.data_feed.DataFeed (i.e. data.sft), masked by that batch's loss_mask: the per-token mean
over the assistant tokens. That one number checks the import (a fresh init gives ~ln(151,680) = 11.93; the
imported untied model, lm_head ~ N(0, 1/64), gives ~12.4) and that the run trains on the assistant-only mask
(the mean over every non-padding label differs from it by far more than the tolerance). Untied, as in
tests/test_hf_interop_parallel.py: with tied random weights (embedding std 0.02) every logit is ~0 and any model
scores ~11.93. The conversations are long enough that some are cut at seq_length + 1 = 65 ids.
Measured: step-1 loss 12.25194343687996, transformers 12.25194343687996 (equal in float64 at PP2, fp32 model);
mean over every label 12.2801728 (2.3e-3 relative away, 230x the tolerance). ~22 s on 2 cores.
"""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from data.tokenizer import EOD, SPECIAL_TOKENS, load_tokenizer
from model.shapes import get_shape
from recipes.compose import compose_config, to_recipe
from tests.hf_reference import random_hf_model
from tests.run_helpers import FAST, run_pretrain, train_losses
from train.distributed import init_model_parallel
from hf_interop.convert import import_hf

TINY_SFT = ["+recipe=tiny", "stage=sft", "model.tied_embeddings=false"]
TRAIN = [*FAST, "train.train_iters=2", "train.eval_interval=0", "data.split='100,0,0'", "optimizer.warmup_iters=0",
         "checkpoint.save_interval=0", "logging.wandb=false", "logging.plots=false"]
WORDS = ("list", "sort", "parse", "file", "json", "key", "value", "loop", "return", "error", "string", "count")


def conversations(n: int, seed: int = 3):
    rng = random.Random(seed)
    for i in range(n):
        question = f"How do I {' '.join(rng.choices(WORDS, k=rng.randint(2, 12)))} in Python? ({i})"
        body = "\n".join(f"    {rng.choice(WORDS)}_{j} = {rng.choice(WORDS)}({j})" for j in range(rng.randint(1, 8)))
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


def transformers_loss(hf, micro_batches, mask_of):
    total, count = 0.0, 0.0
    with torch.no_grad():
        for micro in micro_batches:
            logits = hf(input_ids=micro["tokens"]).logits
            losses = F.cross_entropy(logits.flatten(0, 1), micro["labels"].flatten(), reduction="none")
            mask = mask_of(micro).flatten().float()
            total += float((losses * mask).sum())
            count += float(mask.sum())
    return total / count


def test_sft_run_starts_from_the_import_and_learns_assistant_tokens_only(sft_run):
    losses = train_losses(sft_run["work"] / "run")
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    batch = first_global_batch(sft_run["overrides"])
    tok = load_tokenizer()
    for micro in batch:  # what carries loss is the answers (each starts "Like this:") and their <|im_end|>
        for labels, mask in zip(micro["labels"], micro["loss_mask"].bool()):
            learnt = tok.decode(labels[mask])
            assert learnt.startswith("Like this:\n```python\ndef f():\n") and "How do I" not in learnt
            assert learnt.count("<|im_end|>") <= 1 and "<|im_start|>" not in learnt and "concise" not in learnt
    assistant = transformers_loss(sft_run["hf"], batch, lambda m: m["loss_mask"])
    every_label = transformers_loss(sft_run["hf"], batch, lambda m: m["labels"] != SPECIAL_TOKENS[EOD])
    first = losses[1]
    relative = abs(first - assistant) / assistant
    print(f"step-1 loss {first!r}, transformers on the assistant mask {assistant!r} (relative {relative:.1e}), "
          f"on every label {every_label:.7f}, fresh init ~{math.log(151_680):.3f}")
    assert relative <= 1e-5
    assert abs(every_label - assistant) > 100 * 1e-5 * assistant, "the mask would not be tested"
    assert abs(first - math.log(151_680)) > 0.2, "indistinguishable from a fresh init"
    assert "SFT data" in sft_run["log"] and "conversation(s) cut to 65 ids" in sft_run["log"]


def test_dpo_is_still_refused_before_anything_starts():
    from train.loop import run

    with pytest.raises(NotImplementedError, match="stage=dpo: the preference dataset"):
        run(to_recipe(compose_config(["+recipe=tiny", "stage=dpo"])), {})
