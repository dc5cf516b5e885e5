"""Helpers shared by the checks of bench/gpu_checks.py (imported by path: bench/ is the script's directory)."""
from __future__ import annotations


def init_world():
    from train.distributed import init_model_parallel

    init_model_parallel()


def compose_recipe(*overrides: str):
    from recipes.compose import compose_config, to_recipe

    return to_recipe(compose_config(list(overrides)))


def build_on_gpu(shape, impl: str, dtype):
    """GPTModel on the GPU in `dtype`, weights uninitialised (every caller loads them)."""
    from model.build import build_gpt_model
    from model.config import transformer_config

    config = transformer_config(shape, use_te=impl == "transformer_engine", params_dtype=dtype,
                                perform_initialization=False)
    return build_gpt_model(shape, config, transformer_impl=impl, max_sequence_length=256).cuda().eval()


def compare_logits(ours, reference) -> dict:
    diff = (ours.float() - reference.float()).abs().max().item()
    top1 = (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return {"max_abs": diff, "rel_to_max_logit": diff / reference.float().abs().max().item(), "top1_agree": top1}


def gpu_card():
    import torch

    from recipes.gpus import GPUS

    name = torch.cuda.get_device_name().lower()
    for key in sorted(GPUS, key=len, reverse=True):
        if key in name:
            return GPUS[key]
    return GPUS["h100"]


def synthetic_batches(vocab: int, seq: int, micro: int, count: int, seed: int):
    """Learnable token streams: x[t+1] = (5 x[t] + 3) mod 4096 with 10 % random tokens (loss falls fast)."""
    import torch

    generator, period = torch.Generator().manual_seed(seed), min(4096, vocab)
    out = []
    for _ in range(count):
        x = torch.empty(micro, seq + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, period, (micro,), generator=generator)
        for t in range(seq):
            x[:, t + 1] = (5 * x[:, t] + 3) % period
        noise = torch.rand(micro, seq + 1, generator=generator) < 0.1
        x[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=generator)
        out.append(dict(tokens=x[:, :-1].contiguous(), labels=x[:, 1:].contiguous(), loss_mask=torch.ones(micro, seq),
                        position_ids=torch.arange(seq).expand(micro, seq).contiguous()))
    return out
