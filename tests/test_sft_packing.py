"""Packed SFT rows (data.packing): every conversation's per-token loss is the same packed as alone, through the model.

Rows are built by data.sft.make_sample from real ChatML conversations (Qwen's default system turn, answers of
different lengths) and run through train.objectives.lm.forward_step with packed=True, i.e. pack_micro_batch's thd
boundaries, megatron's per-document RoPE and model.layers.SDPACoreAttention's per-document attention. The
reference is each conversation run alone (tokens ids[:-1], positions 0..n-2) through the same model. Every token
is compared, learnt or not (fp32, <= 1e-6 absolute on losses of ~12).
Negative control: the same rows run unpacked (plain causal attention over the row) must differ by far more,
so the comparison cannot pass because later conversations ignore their context.

Layouts: one rank with random transformers weights (hf_interop.names), and a 2-rank torchrun world at TP2 with
sequence parallelism (this file is its worker; the alone runs are padded to an even length, causal attention
keeps the padding out of the compared positions). PP2 runs packed in tests/test_sft_run.py against transformers.
Measured on 2 cores: max |packed - alone| 0.0 on one rank and at TP2+SP; unpacked control ~0.1; ~25 s in all.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TOLERANCE = 1e-6
QUESTIONS = ("Reverse a list.", "Parse an int from a string, or return None on failure.", "Hi", "Sort by key.",
             "Open a file and count its lines, skipping blank ones; explain the edge cases too.")
SEQ_LENGTH, MICRO = 160, 2


def packed_batch():
    """Two rows packed by data.sft (the real template and sample maker): (batch, [(row, start, ids), ...])."""
    from data.sft import ChatTemplate, make_sample, next_fit
    from data.tokenizer import load_tokenizer

    template = ChatTemplate(load_tokenizer(backend="tiktoken"))
    convs = [template.render([{"role": "user", "content": q}, {"role": "assistant", "content": f"```python\n{q!r}\n```"}])
             for q in QUESTIONS]
    bounds = next_fit(np.array([len(ids) for ids, _ in convs]), SEQ_LENGTH + 1)
    assert len(bounds) - 1 == MICRO, f"expected {MICRO} rows, packing gave {bounds}"
    rows, where = [], []
    for row, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows.append(make_sample(convs[begin:end], SEQ_LENGTH, template.pad, packed=True))
        start = 0
        for ids, _ in convs[begin:end]:
            where.append((row, start, torch.from_numpy(ids.astype(np.int64))))
            start += len(ids)
    assert any(start > 0 for _, start, _ in where), "no row holds a second conversation"
    batch = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
    return batch, where


def compare(model, pad_to: int = 1) -> dict:
    """Max |packed - alone| per-token loss over every conversation, and the same for the unpacked control."""
    from train.objectives.lm import forward_step

    batch, where = packed_batch()
    device = next(model.parameters()).device
    with torch.no_grad():
        packed = forward_step(iter([batch]), model, packed=True)[0].reshape(MICRO, SEQ_LENGTH)
        unpacked = forward_step(iter([batch]), model, packed=False)[0].reshape(MICRO, SEQ_LENGTH)
        worst = {"packed": 0.0, "unpacked": 0.0}
        for row, start, ids in where:
            n = len(ids) - 1
            width = -(-n // pad_to) * pad_to  # sequence parallelism needs a multiple of TP tokens
            tokens = torch.cat([ids[:-1], ids.new_zeros(width - n)])[None].to(device)
            labels = torch.cat([ids[1:], ids.new_zeros(width - n)])[None].to(device)
            alone = model(tokens, torch.arange(width, device=device)[None], None, labels=labels)[0, :n]
            for name, losses in (("packed", packed), ("unpacked", unpacked)):
                difference = (losses[row, start:start + n].float() - alone.float()).abs().max()
                worst[name] = max(worst[name], float(difference))
    worst["conversations"] = len(where)
    return worst


def test_each_conversation_loses_the_same_packed_as_alone_on_one_rank():
    from hf_interop.names import hf_to_megatron, load_into_megatron
    from model.families import get_shape
    from tests.hf_reference import build_megatron, random_hf_model
    from train.distributed import init_model_parallel

    init_model_parallel()
    shape = get_shape("tiny").shrink(tied_embeddings=False)
    model = build_megatron(shape, max_sequence_length=SEQ_LENGTH)
    load_into_megatron(model, hf_to_megatron(random_hf_model(shape, seed=5).state_dict(), shape))
    worst = compare(model.eval())
    print(f"one rank: {worst}")
    assert worst["packed"] <= TOLERANCE
    assert worst["unpacked"] > 1e3 * TOLERANCE, "the control shows no leak: the comparison would be vacuous"


def test_each_conversation_loses_the_same_packed_as_alone_at_tp2_with_sequence_parallelism(tmp_path):
    out = tmp_path / "tp2.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(out)]
    completed = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                               timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-5000:]
    worst = json.loads(out.read_text())
    print(f"TP2+SP: {worst}")
    assert worst["packed"] <= TOLERANCE
    assert worst["unpacked"] > 1e3 * TOLERANCE


def test_transformer_engine_thd_attention_matches_alone_on_a_gpu():
    """GPU only: the TE spec's fused attention takes the same cu_seqlens (bf16, so a bf16 tolerance)."""
    from model.build import transformer_engine_error

    if transformer_engine_error():
        pytest.skip(f"Transformer Engine path: {transformer_engine_error()}")
    from hf_interop.names import hf_to_megatron, load_into_megatron
    from model.families import get_shape
    from tests.hf_reference import build_megatron, random_hf_model
    from train.distributed import init_model_parallel

    init_model_parallel()
    shape = get_shape("tiny").shrink(tied_embeddings=False)
    model = build_megatron(shape, max_sequence_length=SEQ_LENGTH, transformer_impl="transformer_engine")
    load_into_megatron(model, hf_to_megatron(random_hf_model(shape, seed=5).state_dict(), shape, te_names=True))
    worst = compare(model.cuda().bfloat16().eval())
    print(f"TE thd, bf16: {worst}")
    assert worst["packed"] <= 0.05 and worst["unpacked"] > 10 * max(worst["packed"], 0.05)


def test_packing_with_context_parallelism_is_refused_by_the_validator():
    from recipes.compose import compose_config, to_recipe
    from recipes.validate import RecipeError

    layout = ["+recipe=tiny", "stage=sft", "parallel.pp=1", "parallel.cp=2"]
    with pytest.raises(RecipeError, match=r"\[packing-cp\] .*parallel.cp=1 .* or data.packing=false") as error:
        to_recipe(compose_config(layout))
    assert error.value.rules == ["packing-cp"]
    assert to_recipe(compose_config([*layout, "data.packing=false"])).parallel.cp == 2  # unpacked CP trains


def tp2_worker(out: str) -> None:
    """torchrun rank: TP2 + SP model (megatron's seeded init), packed vs alone on the same sharded model."""
    from megatron.core import tensor_parallel

    from model.build import build_gpt_model
    from model.config import transformer_config
    from model.families import get_shape
    from train.distributed import init_model_parallel

    init_model_parallel(tp=2)
    tensor_parallel.model_parallel_cuda_manual_seed(7)
    shape = get_shape("tiny").shrink(tied_embeddings=False)
    config = transformer_config(shape, use_te=False, tensor_model_parallel_size=2, sequence_parallel=True,
                                use_cpu_initialization=True, init_method_std=0.5)
    model = build_gpt_model(shape, config, transformer_impl="local", max_sequence_length=SEQ_LENGTH).eval()
    worst = compare(model, pad_to=2)
    if torch.distributed.get_rank() == 0:
        Path(out).write_text(json.dumps(worst))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    tp2_worker(sys.argv[1])
