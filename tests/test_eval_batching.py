"""Batched greedy decoding gives the completions of decoding each problem alone (fp32, CPU, random tiny models):
megatron's KV-cache path (StaticInferenceContext, TP1) against one-at-a-time decoding by full re-forward (no
cache), and transformers' batched `generate` (left padding + attention mask) against one prompt at a time.
Prompts of different lengths, FIM prompts among them, different token budgets, and a stop sequence that ends one
row early. Negative controls: padding fed as if it were prompt (megatron) or without an attention mask
(transformers) changes completions, so the equality can fail. TP2 and PP2 batched against transformers: the
end-to-end test in tests/test_eval_models.py."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from data.tokenizer import load_tokenizer
from evaluation.generate import END_IDS, Completer, greedy_batch, prompt_ids
from evaluation.problem import Problem

CODE = "def add(a, b):\n    return a + b\n\n\ndef fizzbuzz(n: int) -> str:\n    \"\"\"FizzBuzz of n.\"\"\"\n"
PROBLEMS = [  # different lengths, two FIM prompts, budgets of 5 to 14 tokens
    Problem("plain/long", CODE * 3, "", "", max_new_tokens=14),
    Problem("plain/short", "import os\n", "", "", max_new_tokens=9),
    Problem("fim/a", CODE, "", "", suffix="\n    return str(n)\n", fim=True, max_new_tokens=12),
    Problem("fim/b", "x = [", "", "", suffix="]\nprint(x)\n", fim=True, max_new_tokens=5),
    Problem("plain/mid", CODE, "", "", max_new_tokens=11),
]
# stop sequences that trigger nowhere on these prompts: the stop-rule case is added from the decoded text
NO_STOPS = ("\u2603never\u2603",)


def with_stops(problems, stops):
    return [dataclasses.replace(p, stops=stops[p.task_id]) for p in problems]


def one_at_a_time(decode, problems):
    tokenizer = load_tokenizer("qwen2.5")
    return {p.task_id: tokenizer.decode(decode([prompt_ids(tokenizer, p)], [p.stops], [p.max_new_tokens])[0])
            for p in problems}


def all_at_once(decode, problems):
    tokenizer = load_tokenizer("qwen2.5")
    new = decode([prompt_ids(tokenizer, p) for p in problems], [p.stops for p in problems],
                 [p.max_new_tokens for p in problems])
    return {p.task_id: tokenizer.decode(ids) for p, ids in zip(problems, new)}


def problems_with_a_stop(decode):
    """PROBLEMS whose stop rules cut plain/long after its 4th new token (a stop taken from its own text)."""
    problems = with_stops(PROBLEMS, {p.task_id: NO_STOPS for p in PROBLEMS})
    alone = one_at_a_time(decode, problems)
    assert all(alone.values()) and len(set(alone.values())) > 1, alone  # the models do write varied text
    tokenizer = load_tokenizer("qwen2.5")
    long_ids = decode([prompt_ids(tokenizer, problems[0])], [NO_STOPS], [14])[0]
    stop = tokenizer.decode(long_ids[:4])  # first complete once the 4th token is out
    assert len(long_ids) == 14 and stop not in tokenizer.decode(long_ids[:3])
    return with_stops(PROBLEMS, {**{p.task_id: NO_STOPS for p in PROBLEMS}, "plain/long": (stop,)})


@pytest.fixture(scope="module")
def megatron_model():
    import torch.distributed as dist

    from recipes.compose import compose_config, to_recipe
    from train.distributed import init_process_group
    from train.trainer import Trainer

    created = not dist.is_initialized()
    init_process_group()
    recipe = to_recipe(compose_config(["+recipe=tiny", "parallel.tp=1", "parallel.pp=1", "parallel.cp=1",
                                       "parallel.sp=false", "parallel.distributed_optimizer=false",
                                       "train.micro_batch_size=1", "train.global_batch_size=1"]), world_size=1)
    model = Trainer(recipe, train_iters=1).model
    with torch.no_grad():  # at init std 0.02 attention is near uniform and the greedy token mostly follows the
        for chunk in model:  # last input token: a row reading another row's cache went unnoticed. x6: sharp.
            chunk.eval()
            for name, parameter in chunk.named_parameters():
                if "layer_norm" not in name:
                    parameter.mul_(6)
    yield model
    if created:
        dist.destroy_process_group()


class Recorded:
    """A decoder that records how many rows each call carries."""

    def __init__(self, decoder):
        self.decoder, self.batches = decoder, []

    def reset(self, batch, capacity):
        self.decoder.reset(batch, capacity)

    def __call__(self, sequences, rows):
        self.batches.append(len(rows))
        return self.decoder(sequences, rows)


def test_megatron_batches_equal_one_at_a_time_full_forward(megatron_model):
    from evaluation.generate import MegatronKVCache, PipelineForward

    tokenizer, cpu = load_tokenizer("qwen2.5"), torch.device("cpu")
    reference = functools.partial(greedy_batch, PipelineForward(megatron_model, cpu), tokenizer, max_length=512)
    problems = problems_with_a_stop(reference)
    alone = one_at_a_time(reference, problems)  # full re-forward per token, no cache, one prompt at a time
    assert alone["plain/long"] == problems[0].stops[0]  # the stop ended that row after its 4th token
    recorded = Recorded(MegatronKVCache(megatron_model[0], cpu))
    cached = functools.partial(greedy_batch, recorded, tokenizer, max_length=512)
    assert all_at_once(cached, problems) == alone
    # pre-fill, then fewer rows as they finish (fim/b after 5 tokens, plain/long after its stop, ...)
    assert recorded.batches[0] == 5 and recorded.batches[-1] == 1
    assert recorded.batches == sorted(recorded.batches, reverse=True) and len(set(recorded.batches)) >= 3
    for batch_size in (1, 2, 5):
        assert Completer(cached, batch_size=batch_size)("t", problems) == alone, batch_size

    # control: left padding fed as prompt (no mask, shared positions) moves the shorter rows' completions
    pad = min(END_IDS)
    prompts = [prompt_ids(tokenizer, p) for p in problems]
    width = max(map(len, prompts))
    padded = cached([[pad] * (width - len(p)) + p for p in prompts], [p.stops for p in problems],
                    [p.max_new_tokens for p in problems])
    assert any(tokenizer.decode(ids) != alone[p.task_id] for ids, p in zip(padded, problems))


def test_transformers_batched_generate_equals_one_at_a_time(tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from evaluation.generate import hf_decoder

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.12)  # sharp attention: context matters (see megatron_model)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    decode = hf_decoder(tmp_path)
    problems = problems_with_a_stop(decode)
    alone = one_at_a_time(decode, problems)  # no padding: generate on one prompt
    assert all_at_once(decode, problems) == alone
    for batch_size in (2, 5):
        assert Completer(decode, batch_size=batch_size)("t", problems) == alone, batch_size

    # control: the same left-padded batch without its attention mask gives other completions
    tokenizer, pad = load_tokenizer("qwen2.5"), min(END_IDS)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    prompts = [prompt_ids(tokenizer, p) for p in problems]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=GenerationConfig(
        max_new_tokens=5, do_sample=False, eos_token_id=sorted(END_IDS), pad_token_id=pad))
    masked = [decode([prompt], [NO_STOPS], [5])[0] for prompt in prompts]
    assert any(row[:len(want)] != want for row, want in zip(out[:, width:].tolist(), masked))


def test_batches_are_sorted_by_length_and_bounded_by_the_token_budget():
    """A batch's prompts differ by at most the token budget, so steps spent feeding the longer prompts (megatron)
    or on padding (transformers) never outnumber the generated ones; a full batch starts the next."""
    completer = Completer(lambda prompts, stops, limits: [], batch_size=3)
    prompts = [[0] * n for n in (50, 3, 10, 52, 11, 12, 300)]
    assert completer.batches(prompts, [16] * 7) == [[1, 2, 4], [5], [0, 3], [6]]
    assert completer.batches(prompts, [400] * 7) == [[1, 2, 4], [5, 0, 3], [6]]
