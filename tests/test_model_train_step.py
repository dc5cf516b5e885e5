"""Forward and backward on the CPU through the training loop's code path.

The path: megatron's DistributedDataParallel wrapper (gradients in `param.main_grad` buffers),
get_forward_backward_func() (forward_backward_no_pipelining at PP=1) with 2 micro-batches, GPTModel's own
per-token cross entropy from `labels`, a masked-mean loss function, finalize_model_grads.
The reference is transformers' Qwen2 with the same weights: its loss and its gradients, mapped into HF names
by hf_interop.names.megatron_to_hf (gradients share their parameters' layout). Measured in fp32: loss equal to
1.0e-7 relative, per-parameter gradient error <= 1.6e-6 of that parameter's largest gradient (worst: a k_proj
bias, whose gradient is small because softmax cancels all but RoPE's position-dependent part of it).
"""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from hf_interop.names import hf_to_megatron, load_into_megatron, megatron_to_hf
from model.families import get_shape
from tests.hf_reference import build_megatron, random_hf_model
from train.distributed import init_model_parallel

MICRO_BATCHES, MICRO_BATCH_SIZE, SEQ = 2, 2, 32
GRAD_REL_LIMIT = 1e-5  # fp32; docs/testing.md: <= 7e-7 measured between parallel layouts


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    init_model_parallel()


def make_micro_batches(vocab_size: int, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(MICRO_BATCHES):
        tokens = torch.randint(0, vocab_size, (MICRO_BATCH_SIZE, SEQ + 1), generator=generator)
        loss_mask = (torch.rand(MICRO_BATCH_SIZE, SEQ, generator=generator) > 0.25).float()  # some tokens off
        batches.append(dict(
            tokens=tokens[:, :-1], labels=tokens[:, 1:], loss_mask=loss_mask,
            position_ids=torch.arange(SEQ).expand(MICRO_BATCH_SIZE, -1),
        ))
    return batches


def masked_token_mean(loss_mask, per_token_loss):
    """megatron's 3-tuple loss convention: (summed loss, token count, report); the schedule divides."""
    total = (per_token_loss.float() * loss_mask).sum()
    tokens = loss_mask.sum().to(torch.int)
    return total, tokens, {"lm loss": torch.stack([total.detach(), tokens.float()])}


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return per_token_loss, partial(masked_token_mean, batch["loss_mask"])


def hf_loss_and_grads(hf, batches):
    """Mean over micro-batches of each micro-batch's masked token mean, as megatron's schedule computes it."""
    hf.zero_grad()
    total = 0.0
    for batch in batches:
        logits = hf(input_ids=batch["tokens"], position_ids=batch["position_ids"]).logits.float()
        per_token = F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")
        loss = (per_token * batch["loss_mask"]).sum() / batch["loss_mask"].sum() / len(batches)
        loss.backward()
        total += float(loss)
    grads = {name: p.grad for name, p in hf.named_parameters()}  # a tied lm_head appears once, as embed_tokens
    return total, grads


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_forward_backward_matches_transformers_gradients(tied):
    shape = get_shape("tiny", vocab_size=1024, tied_embeddings=tied)
    hf = random_hf_model(shape).train()
    batches = make_micro_batches(shape.vocab_size)
    hf_loss, hf_grads = hf_loss_and_grads(hf, batches)

    module = build_megatron(shape)
    load_into_megatron(module, hf_to_megatron(hf.state_dict(), shape))
    config = module.config
    config.finalize_model_grads_func = finalize_model_grads
    model = DistributedDataParallel(
        config=config, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=module
    )
    model.train()
    model.zero_grad_buffer()
    reports = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(batches), model=[model],
        num_microbatches=MICRO_BATCHES, seq_length=SEQ, micro_batch_size=MICRO_BATCH_SIZE, forward_only=False,
    )
    loss = sum(float(r["lm loss"][0] / r["lm loss"][1]) for r in reports) / MICRO_BATCHES
    # measured 1.0e-7 relative (fp32 summation order differs between the two implementations)
    assert loss == pytest.approx(hf_loss, rel=1e-6, abs=0)

    named = dict(module.named_parameters())
    not_finite = [n for n, p in named.items() if p.main_grad is None or not torch.isfinite(p.main_grad).all()]
    assert not not_finite, f"parameters without finite gradients: {not_finite}"
    assert all(p.main_grad.abs().max() > 0 for p in named.values())

    megatron_grads = megatron_to_hf({n: p.main_grad for n, p in named.items()}, shape)
    assert megatron_grads.keys() == hf_grads.keys()
    errors = {name: float((megatron_grads[name] - g).abs().max() / g.abs().max()) for name, g in hf_grads.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_REL_LIMIT, f"gradient of {worst} off by {errors[worst]:.3g} relative"
