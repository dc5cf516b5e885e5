"""Evaluation's batched greedy decoding: new tokens/s of the megatron KV-cache path at batch 1, 16 and 64, one run.

    python bench/eval_decode.py                                    # tiny model, 64 HumanEval prompts
    python bench/eval_decode.py --recipe 0.5b --layers 4 --new 32  # 0.5B width, 4 layers
    python bench/eval_decode.py --full                             # + batch 1 by full re-forward (no cache)

One process (TP1/PP1), a randomly initialised model from the recipe (fp32, CPU or the current GPU), the first
--prompts HumanEval prompts decoded greedily (up to --new tokens, HumanEval's stop sequences) exactly as
launch/evaluate.py decodes them: evaluation.generate.Completer's batches over greedy_batch with megatron's
StaticInferenceContext. Every run must give the completions of the first; the ratio is new tokens/s over the
first run's. Timings include each batch's cache allocation and pre-fill and the stop-rule checks.
"""
import argparse
import functools
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
    model = build_inference_model(to_recipe(compose_config(overrides), world_size=1))
    for chunk in model:
        chunk.eval()
    return model


def decode_all(decoder, problems: list, new: int, batch_size: int) -> tuple[dict, int, float]:
    """Completions as launch/evaluate.py makes them, the new tokens decoded and the seconds it took."""
    from data.tokenizer import load_tokenizer
    from evaluation.generate import Completer, greedy_batch

    decoded, tokenizer = [], load_tokenizer("qwen2.5")

    def decode(prompts, stops, limits):
        new_ids = greedy_batch(decoder, tokenizer, prompts, stops, limits, max_length=1 << 20)
        decoded.extend(map(len, new_ids))
        return new_ids

    start = time.perf_counter()
    completions = Completer(decode, new, batch_size)("humaneval", problems)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return completions, sum(decoded), time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--layers", type=int, default=0, help="override model.num_layers (0: the recipe's)")
    parser.add_argument("--prompts", type=int, default=64, help="the first N HumanEval prompts (38-255 tokens)")
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--full", action="store_true", help="also batch 1 by full re-forward per token")
    args = parser.parse_args(argv)
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29531"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                       ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    from evaluation.generate import MegatronKVCache, PipelineForward
    from evaluation.tasks import humaneval

    model = build_model(args.recipe, args.layers)
    device = next(model[0].parameters()).device
    problems = humaneval()[:args.prompts]
    runs = [(f"batch {n}", MegatronKVCache(model[0], device), int(n)) for n in args.batch_sizes.split(",")]
    if args.full:
        runs.append(("batch 1, no cache", PipelineForward(model, device), 1))
    print(f"{args.recipe} ({args.layers or 'all'} layers), the first {len(problems)} HumanEval prompts, up to "
          f"{args.new} new tokens each (its stop rules), {device}")
    print(f"{'decoding':>18} {'new tok/s':>10} {'vs first':>9}", flush=True)
    reference, first_rate = None, None
    for name, decoder, batch_size in runs:
        with torch.no_grad():
            completions, tokens, seconds = decode_all(decoder, problems, args.new, batch_size)
        reference = reference or completions
        if completions != reference:
            raise SystemExit(f"{name}: completions differ from {runs[0][0]}'s")
        first_rate = first_rate or tokens / seconds
        print(f"{name:>18} {tokens / seconds:>10.1f} {tokens / seconds / first_rate:>8.1f}x", flush=True)

if __name__ == "__main__":
    main()
