"""Shared pieces of the model tests: a randomly initialised transformers Qwen2 (the independent reference),
our megatron model built for a shape, and the logits comparison with docs/testing.md's thresholds.

Random weights are chosen so that layout mistakes show in the logits:
- biases N(0, 0.5^2) and norm weights 1 + N(0, 0.2^2): zero biases and unit norms make a wrong bias layout or
  a swapped norm invisible;
- linear weights N(0, 1/fan_in), so activations stay O(1) through the layers;
- embedding N(0, 0.02^2) (HF's initializer_range), so the hidden state entering the first RMSNorm has
  mean square ~4e-4 and the norm's eps matters: 1e-5 instead of 1e-6 moves that norm's scale by ~1 %
  (tests/test_model_hf_parity.py checks the thresholds catch it).
"""
from __future__ import annotations

from typing import Optional

import torch

from model.build import build_gpt_model
from model.config import transformer_config
from hf_interop.names import hf_config_for
from model.shapes import ModelShape, YarnScaling

# docs/testing.md: fp32 parity is ~2e-7 of the largest logit; 1e-4 absolute alone hides an eps error.
MAX_ABS_DIFF = 1e-4
MAX_REL_DIFF = 1e-5


def fill_random_(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter of an HF Qwen2 model with the layout-revealing random values above."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(generator=generator)  # in place: no temporaries for the ~1e9-parameter 32B widths
            if name.endswith("norm.weight"):
                param.mul_(0.2).add_(1.0)
            elif name.endswith(".bias"):
                param.mul_(0.5)
            elif "embed_tokens" in name:
                param.mul_(0.02)
            else:  # nn.Linear weight [out, in]
                param.mul_(param.shape[1] ** -0.5)


def random_hf_model(shape: ModelShape, seed: int = 0, yarn: Optional[YarnScaling] = None, device="cpu"):
    """transformers Qwen2ForCausalLM for `shape` with random weights, fp32, eager attention, eval mode.

    Built on the meta device and materialised once: HF's own init of the 32B widths (2 layers, ~1e9
    parameters) costs ~15 s on 2 cores and would be overwritten anyway.
    """
    from transformers import Qwen2ForCausalLM

    config = hf_config_for(shape, yarn=yarn)
    config._attn_implementation = "eager"  # plain matmul/softmax: independent of our SDPA core attention
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty re-creates parameters, which unties lm_head from embed_tokens
    # to_empty leaves buffers uninitialised too: recompute RoPE's inv_freq (the only buffers) for real
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    fill_random_(model, seed)  # on the CPU, so a GPU run gets the same weights from the same seed
    model.to(device)
    if shape.tied_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.eval()


def build_megatron(shape: ModelShape, yarn: Optional[YarnScaling] = None, max_sequence_length: int = 128,
                   transformer_impl: str = "local"):
    """Our GPTModel for `shape` in fp32, weights left uninitialised (every test loads them)."""
    config = transformer_config(shape, use_te=transformer_impl == "transformer_engine", yarn=yarn,
                                perform_initialization=False)
    return build_gpt_model(shape, config, transformer_impl=transformer_impl,
                           max_sequence_length=max_sequence_length, yarn=yarn)


def random_tokens(shape: ModelShape, batch: int, seq: int, seed: int = 1, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, shape.vocab_size, (batch, seq), generator=generator)
    positions = torch.arange(seq).unsqueeze(0).expand(batch, -1).contiguous()
    return tokens.to(device), positions.to(device)


def logits_difference(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |diff|, max |diff| / max |reference logit|)."""
    diff = float((ours.float() - reference.float()).abs().max())
    return diff, diff / float(reference.abs().max())


def assert_logits_match(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    diff, relative = logits_difference(ours, reference)
    assert diff <= MAX_ABS_DIFF and relative <= MAX_REL_DIFF, (
        f"{what}: max|diff| {diff:.3g} (limit {MAX_ABS_DIFF}), relative to the largest logit {relative:.3g} "
        f"(limit {MAX_REL_DIFF})"
    )
