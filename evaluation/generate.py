"""Greedy decoding for evaluation, from a megatron checkpoint (any TP/PP layout, one process or torchrun) or a
Hugging Face directory (transformers). Both run the same loop (`greedy`): argmax of the last position, stop at
end-of-text/FIM-pad/<|im_end|> ids or when the decoded text holds a stop sequence.

KV cache (`KVCacheNextToken`): each call feeds only the tokens added since the last one; a prompt that does not
extend the cached ids starts a new cache. transformers keeps its DynamicCache; megatron uses its own
StaticInferenceContext (allocated per prompt for 2 x prompt + 256 positions, re-allocated if a completion
outgrows it). Without it each new token re-runs the whole sequence: O(n^2) in the generated length. The cached
logits equal the full forward's to fp32 rounding (tests/test_eval_models.py).

Megatron: the model is built by train.trainer.build_inference_model (the training run's recipe -> megatron path,
no DDP buffers, no optimizer) from the recipe the checkpoint stores, at TP x PP = the world size (one process:
TP1/PP1; torch_dist reshards on load), with DP/CP 1 and sequence parallelism off (prompts have arbitrary
lengths). Every rank feeds the same tokens. At PP1 (with any TP) the model gathers the vocabulary-parallel logits
itself and every rank takes the same argmax. Under PP the KV cache is not used: the pipeline schedule runs a
full forward per token, the last stage all-gathers the logits over TP, takes the argmax and broadcasts the token
to every rank.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from data.tokenizer import EOD, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, IM_END, SPECIAL_TOKENS, load_tokenizer
from evaluation.problem import Problem, truncate

END_IDS = frozenset(SPECIAL_TOKENS[t] for t in (EOD, FIM_PAD, IM_END))


def prompt_ids(tokenizer, problem: Problem) -> List[int]:
    if problem.ids:
        return list(problem.ids)
    if not problem.fim:
        return list(tokenizer.encode(problem.prompt))
    return [SPECIAL_TOKENS[FIM_PREFIX], *tokenizer.encode(problem.prompt), SPECIAL_TOKENS[FIM_SUFFIX],
            *tokenizer.encode(problem.suffix), SPECIAL_TOKENS[FIM_MIDDLE]]


def greedy(next_token: Callable[[List[int]], int], tokenizer, prompt: List[int], stops, max_new_tokens: int,
           max_length: int) -> List[int]:
    """New token ids, greedy, until an end id, a stop sequence in the text, max_new_tokens or max_length."""
    ids, new = list(prompt), []
    while len(new) < max_new_tokens and len(ids) < max_length:
        token = next_token(ids)
        if token in END_IDS:
            break
        new.append(token)
        ids.append(token)
        text = tokenizer.decode(new)
        if truncate(text, stops) != text:
            break
    return new


class KVCacheNextToken:
    """next_token(ids) that feeds a back end only the ids added since its previous call.

    `new_cache(capacity)` makes an empty cache for `capacity` positions; `forward(cache, new_ids, offset)` runs
    new_ids at positions offset.. through the model, extending the cache, and returns the argmax of the last one.
    """

    def __init__(self, new_cache: Callable[[int], object], forward: Callable[[object, List[int], int], int],
                 max_length: int):
        self.new_cache, self.forward, self.max_length = new_cache, forward, max_length
        self.cache, self.cached, self.capacity = None, [], 0

    def __call__(self, ids: List[int]) -> int:
        extends = self.cache is not None and len(self.cached) < len(ids) <= self.capacity \
            and ids[:len(self.cached)] == self.cached
        if not extends:
            self.capacity = min(self.max_length, 2 * len(ids) + 256)
            self.cache, self.cached = self.new_cache(self.capacity), []
        token = self.forward(self.cache, ids[len(self.cached):], len(self.cached))
        self.cached = list(ids)
        return token


class Completer:
    """complete(task, problems) -> {task_id: completion text}, for evaluation.harness.evaluate."""

    def __init__(self, next_token: Callable[[List[int]], int], max_length: int, max_new_tokens: Optional[int] = None,
                 log: Callable[[str], None] = lambda line: None):
        self.next_token, self.max_length = next_token, max_length
        self.max_new_tokens, self.log = max_new_tokens, log
        self.tokenizer = load_tokenizer("qwen2.5")

    def __call__(self, task: str, problems: List[Problem]) -> Dict[str, str]:
        completions = {}
        for number, problem in enumerate(problems, 1):
            limit = self.max_new_tokens or problem.max_new_tokens
            new = greedy(self.next_token, self.tokenizer, prompt_ids(self.tokenizer, problem), problem.stops,
                         limit, self.max_length)
            completions[problem.task_id] = self.tokenizer.decode(new)
            if number % 20 == 0 or number == len(problems):
                self.log(f"{task}: generated {number}/{len(problems)}")
        return completions


# ------------------------------------------------------------------------------------------ transformers
def hf_next_token(directory: Path) -> tuple[Callable[[List[int]], int], int]:
    from transformers import AutoModelForCausalLM, DynamicCache

    if not (Path(directory) / "config.json").is_file():
        raise ValueError(f"{directory} is not a Hugging Face model directory (no config.json); a megatron "
                         "checkpoint is evaluated with --checkpoint")
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()

    @torch.no_grad()
    def forward(cache, new: List[int], offset: int) -> int:
        logits = model(input_ids=torch.tensor([new]), past_key_values=cache, use_cache=True).logits
        return int(logits[0, -1].argmax())

    max_length = int(model.config.max_position_embeddings)
    return KVCacheNextToken(lambda capacity: DynamicCache(), forward, max_length), max_length


# ------------------------------------------------------------------------------------------------ megatron
def megatron_recipe(checkpoint: Path, world_size: int, pipeline: Optional[int] = None):
    """The recipe stored in a training checkpoint, at an inference layout for `world_size` ranks: `pipeline`
    stages and TP = world_size / pipeline when given, else the checkpoint's own TP x PP when it uses every rank,
    else TP = world_size."""
    from megatron.core import dist_checkpointing
    from omegaconf import OmegaConf

    from recipes.compose import to_recipe
    from recipes.schema import Recipe

    common = dist_checkpointing.load_common_state_dict(str(checkpoint))
    stored = common.get("recipe") if isinstance(common, dict) else None
    if not stored:
        raise ValueError(f"{checkpoint} stores no training recipe (an import?): export it with "
                         "launch/convert.py and evaluate the HF directory with --hf")
    tp, pp = stored["parallel"]["tp"], stored["parallel"]["pp"]
    if pipeline is not None:
        if pipeline < 1 or world_size % pipeline:
            raise ValueError(f"--pp {pipeline} does not divide the {world_size} processes; pass a divisor of it")
        tp, pp = world_size // pipeline, pipeline
    elif tp * pp != world_size:
        tp, pp = world_size, 1
    stored = OmegaConf.merge(OmegaConf.structured(Recipe), stored, {
        "parallel": dict(tp=tp, pp=pp, vpp=1, cp=1, sp=False, distributed_optimizer=False),
        "train": dict(micro_batch_size=1, global_batch_size=1), "precision": dict(fp8=None)})
    return to_recipe(stored, world_size=world_size)


def megatron_next_token(checkpoint: Path, pipeline: Optional[int] = None) -> tuple[Callable[[List[int]], int], int]:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from train.checkpoint import load_weights, resolve_checkpoint
    from train.distributed import rank_device
    from train.trainer import build_inference_model

    directory = resolve_checkpoint(checkpoint)
    recipe = megatron_recipe(directory, torch.distributed.get_world_size(), pipeline)
    chunks = build_inference_model(recipe)
    load_weights(chunks, directory)
    for chunk in chunks:
        chunk.eval()
    device = rank_device()
    max_length = recipe.model_shape().max_position_embeddings
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return _megatron_kv_cache(chunks[0], device, max_length), max_length
    last_stage = parallel_state.get_pipeline_model_parallel_last_rank()

    def forward_step(data_iterator, model):
        tokens = next(data_iterator)
        positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0)
        return model(tokens, positions, None), lambda output, non_loss_data=False: output

    @torch.no_grad()
    def next_token(ids: List[int]) -> int:
        tokens = torch.tensor([ids], device=device)
        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([tokens]), model=chunks,
            num_microbatches=1, seq_length=len(ids), micro_batch_size=1, forward_only=True,
            collect_non_loss_data=True)
        token = torch.zeros(1, dtype=torch.long, device=device)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            logits = gather_from_tensor_model_parallel_region(collected[0])  # [1, s, vocab]
            token[0] = logits[0, -1].argmax()
        torch.distributed.broadcast(token, last_stage, group=parallel_state.get_pipeline_model_parallel_group())
        return int(token[0])

    return next_token, max_length


def _megatron_kv_cache(model, device: torch.device, max_length: int) -> KVCacheNextToken:
    """One model chunk (PP1) decoding with megatron's StaticInferenceContext: GPTModel gathers the TP logits of
    the last position (`runtime_gather_output`), so every TP rank computes the same token."""
    from megatron.core.inference.contexts import StaticInferenceContext

    @torch.no_grad()
    def forward(context, new: List[int], offset: int) -> int:
        tokens = torch.tensor([new], device=device)
        positions = torch.arange(offset, offset + len(new), device=device).unsqueeze(0)
        logits = model(tokens, positions, None, inference_context=context, runtime_gather_output=True)
        context.sequence_len_offset += len(new)
        return int(logits[0, -1].argmax())

    return KVCacheNextToken(lambda capacity: StaticInferenceContext(1, capacity), forward, max_length)
