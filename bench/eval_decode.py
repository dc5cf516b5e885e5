"""Evaluation's greedy decoding with and without the KV cache: new tokens/s of the megatron path, same run.

    python bench/eval_decode.py                                   # tiny model, prompts of 128 and 512 tokens
    python bench/eval_decode.py --recipe 0.5b --layers 4 --new 64 # 0.5B width, 4 layers

One process (TP1/PP1), a randomly initialised model from the recipe (fp32, CPU or the current GPU), greedy
decoding of --new tokens after a random prompt of each --prompt length, twice: by full re-forward of the whole
sequence per token (the baseline, what the pipeline-parallel path still does) and through evaluation.generate's
KV cache (megatron's StaticInferenceContext). Both must produce the same tokens; the ratio is cached over full.
Timings include the first call (the cache's allocation and the prompt's prefill), as an evaluation pays them per
problem.
"""
import argparse
import os
import time

import torch


def build_model(recipe_name: str, layers: int):
    from recipes.compose import compose_config, to_recipe
    from train.trainer import build_inference_model

    overrides = [f"+recipe={recipe_name}", "parallel.tp=1", "parallel.pp=1", "parallel.vpp=1", "parallel.cp=1",
                 "parallel.sp=false", "parallel.distributed_optimizer=false", "parallel.overlap_param_gather=false",
                 "parallel.overlap_grad_reduce=false", "train.micro_batch_size=1",
                 "train.global_batch_size=1", "precision.fp8=null", "precision.dtype=fp32"]
    if layers:
        overrides.append(f"model.num_layers={layers}")
    return build_inference_model(to_recipe(compose_config(overrides), world_size=1))[0].eval()


def decode(next_token, prompt: list, new: int) -> tuple[list, float]:
    ids = list(prompt)
    start = time.perf_counter()
    for _ in range(new):
        ids.append(next_token(ids))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return ids[len(prompt):], time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--layers", type=int, default=0, help="override model.num_layers (0: the recipe's)")
    parser.add_argument("--prompt", default="128,512", help="comma-separated prompt lengths")
    parser.add_argument("--new", type=int, default=128, help="new tokens per prompt")
    args = parser.parse_args(argv)
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29531"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                       ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    from evaluation.generate import _megatron_kv_cache

    model = build_model(args.recipe, args.layers)
    device = next(model.parameters()).device

    @torch.no_grad()
    def full_forward(ids: list) -> int:
        tokens = torch.tensor([ids], device=device)
        return int(model(tokens, torch.arange(len(ids), device=device)[None], None)[0, -1].argmax())

    generator = torch.Generator().manual_seed(0)
    print(f"{args.recipe} ({args.layers or 'all'} layers), {args.new} new tokens, {device}")
    print(f"{'prompt':>7} {'full tok/s':>11} {'cached tok/s':>13} {'ratio':>7}")
    for length in (int(n) for n in args.prompt.split(",")):
        prompt = torch.randint(0, 10_000, (length,), generator=generator).tolist()
        full, full_s = decode(full_forward, prompt, args.new)
        cached, cached_s = decode(_megatron_kv_cache(model, device, length + args.new), prompt, args.new)
        if cached != full:
            raise SystemExit(f"prompt {length}: cached tokens differ from the full forward's")
        print(f"{length:>7} {args.new / full_s:>11.1f} {args.new / cached_s:>13.1f} {full_s / cached_s:>6.1f}x")


if __name__ == "__main__":
    main()
