"""Greedy decoding for evaluation, batched, from a megatron checkpoint (any TP/PP layout, one process or torchrun)
or a Hugging Face directory (transformers). A row stops at an end-of-text/FIM-pad/<|im_end|> id, when its
decoded text holds one of its stop sequences, at its token budget or at the model's max positions; a finished
row leaves the batch. Batched completions equal one-at-a-time ones (tests/test_eval_batching.py).

Megatron (`greedy_batch`): rows share positions; the batch starts at its shortest prompt and a longer prompt is
fed its own tokens one step at a time, so nothing is padded and no attention mask is needed. At PP1 (any TP)
megatron's StaticInferenceContext caches keys and values (one token per row per step after the pre-fill); under
PP each step runs the whole batch through the pipeline schedule without a cache. The model is built by
train.trainer.build_inference_model (no DDP buffers, no optimizer) from the recipe the checkpoint stores, at
TP x PP = the world size (one process: TP1/PP1; torch_dist reshards on load), with DP/CP 1 and sequence
parallelism off (prompts have arbitrary lengths); every rank feeds the same tokens and takes the same argmax (GPTModel gathers the vocabulary-parallel logits at PP1,
the last stage broadcasts them under PP).

transformers (`hf_decoder`): its own batched `generate`, prompts padded on the left with an attention mask.
Problems are sorted by length before batching, so rows of a batch are alike (bench/eval_decode.py: speed).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from data.tokenizer import EOD, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, IM_END, SPECIAL_TOKENS, load_tokenizer
from evaluation.problem import Problem, truncate

END_IDS = frozenset(SPECIAL_TOKENS[t] for t in (EOD, FIM_PAD, IM_END))
DEFAULT_BATCH_SIZE = 16  # problems decoded together (--batch-size)


def prompt_ids(tokenizer, problem: Problem) -> List[int]:
    if problem.ids:
        return list(problem.ids)
    if not problem.fim:
        return list(tokenizer.encode(problem.prompt))
    return [SPECIAL_TOKENS[FIM_PREFIX], *tokenizer.encode(problem.prompt), SPECIAL_TOKENS[FIM_SUFFIX],
            *tokenizer.encode(problem.suffix), SPECIAL_TOKENS[FIM_MIDDLE]]


def stopped(tokenizer, new: List[int], stops: Sequence[str]) -> bool:
    """Whether the text of the new ids holds one of the stop sequences (decoded whole: a stop may span tokens)."""
    text = tokenizer.decode(new)
    return truncate(text, stops) != text


def greedy_batch(decoder, tokenizer, prompts: List[List[int]], stops: List[Sequence[str]], limits: List[int],
                 max_length: int) -> List[List[int]]:
    """New token ids of each prompt, greedy, decoded together: a row ends at an end id (not kept), at a stop
    sequence in its text (the token that completes it is kept), at its own `limits` entry or at max_length.

    Prompts of different lengths share positions and nothing is padded: the batch starts at the
    shortest prompt's length and moves one position per step for every row; a row still inside its prompt is fed
    its own next prompt token and its argmax is ignored. No padding token is ever attended, so each row's logits
    are those of decoding it alone. A finished row is dropped from the batch (the decoder compacts its cache).
    `decoder(sequences, rows)` returns the argmax after the last position of each sequence; `rows` names them
    (stable indices into `prompts`), `decoder.reset(batch, capacity)` starts a new batch.
    """
    new: List[List[int]] = [[] for _ in prompts]
    sequences = [list(p) for p in prompts]
    active = [i for i, p in enumerate(prompts) if limits[i] > 0 and len(p) < max_length]
    if not active:
        return new
    position = min(len(prompts[i]) for i in active)
    decoder.reset(len(active), min(max_length, max(len(prompts[i]) + limits[i] for i in active)))
    while active:
        tokens = decoder([sequences[i][:position] for i in active], active)
        finished = set()
        for i, token in zip(active, tokens):
            if position < len(prompts[i]):
                continue  # still reading its prompt: sequences[i][position] is the prompt's own token
            if token in END_IDS:
                finished.add(i)
                continue
            new[i].append(token)
            sequences[i].append(token)
            if len(new[i]) >= limits[i] or len(sequences[i]) >= max_length or stopped(tokenizer, new[i], stops[i]):
                finished.add(i)
        active = [i for i in active if i not in finished]
        position += 1
    return new


class Completer:
    """complete(task, problems) -> {task_id: completion text}, for evaluation.harness.evaluate.

    `decode(prompts, stops, limits)` is a back end's batched greedy decoding (new ids per prompt). Problems are
    sorted by prompt length and cut into batches of at most `batch_size` whose prompt lengths differ by at most the
    token budget: a longer prompt is fed one token per step (megatron) or a shorter one padded
    (transformers), so those extra steps never outnumber the generated ones."""

    def __init__(self, decode: Callable[[List[List[int]], List[Sequence[str]], List[int]], List[List[int]]],
                 max_new_tokens: Optional[int] = None, batch_size: Optional[int] = None,
                 log: Callable[[str], None] = lambda line: None):
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"--batch-size {batch_size}: pass 1 or more")
        self.decode, self.max_new_tokens, self.batch_size, self.log = decode, max_new_tokens, batch_size, log
        self.tokenizer = load_tokenizer("qwen2.5")

    def batches(self, prompts: List[List[int]], limits: List[int]) -> List[List[int]]:
        """Indices of `prompts`, batched as the class says."""
        batches: List[List[int]] = []
        for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
            first = batches[-1][0] if batches else None
            full = first is not None and len(batches[-1]) == self.batch_size
            if first is None or full or len(prompts[i]) - len(prompts[first]) > limits[i]:
                batches.append([])
            batches[-1].append(i)
        return batches

    def __call__(self, task: str, problems: List[Problem]) -> Dict[str, str]:
        prompts = [prompt_ids(self.tokenizer, problem) for problem in problems]
        limits = [self.max_new_tokens or problem.max_new_tokens for problem in problems]
        completions, done = {}, 0
        for batch in self.batches(prompts, limits):
            new = self.decode([prompts[i] for i in batch], [problems[i].stops for i in batch],
                              [limits[i] for i in batch])
            for i, ids in zip(batch, new):
                completions[problems[i].task_id] = self.tokenizer.decode(ids)
            if done // 20 < (done + len(batch)) // 20 or done + len(batch) == len(problems):
                self.log(f"{task}: generated {done + len(batch)}/{len(problems)}")
            done += len(batch)
        return {problem.task_id: completions[problem.task_id] for problem in problems}


# ------------------------------------------------------------------------------------------ transformers
def hf_decoder(directory: Path) -> Callable[[List[List[int]], List[Sequence[str]], List[int]], List[List[int]]]:
    """Batched greedy decoding of a Hugging Face directory with transformers' own `generate`: prompts padded on
    the left with an attention mask (generate derives each row's positions from it), a DynamicCache, and a
    stopping criterion per row (its stop sequences, its token budget, max_position_embeddings); a finished row
    is padded with an end id until the batch ends, and cut there."""
    from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList

    if not (Path(directory) / "config.json").is_file():
        raise ValueError(f"{directory} is not a Hugging Face model directory (no config.json); a megatron "
                         "checkpoint is evaluated with --checkpoint")
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    max_length = int(model.config.max_position_embeddings)
    tokenizer = load_tokenizer("qwen2.5")
    pad = min(END_IDS)

    class RowsDone(StoppingCriteria):
        def __init__(self, stops, limits, width):
            self.stops, self.limits, self.width = stops, limits, width

        def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            done = []
            for row, stops, limit in zip(input_ids.tolist(), self.stops, self.limits):
                done.append(len(row) - self.width >= limit or stopped(tokenizer, row[self.width:], stops))
            return torch.tensor(done, device=input_ids.device)

    @torch.no_grad()
    def decode(prompts: List[List[int]], stops: List[Sequence[str]], limits: List[int]) -> List[List[int]]:
        limits = [min(limit, max_length - len(p)) for p, limit in zip(prompts, limits)]  # as greedy_batch stops
        if max(limits) <= 0:
            return [[] for _ in prompts]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        config = GenerationConfig(max_new_tokens=max(limits), do_sample=False, eos_token_id=sorted(END_IDS),
                                  pad_token_id=pad)
        out = model.generate(ids, attention_mask=mask, generation_config=config,
                             stopping_criteria=StoppingCriteriaList([RowsDone(stops, limits, width)]))
        rows = []
        for row, limit in zip(out[:, width:].tolist(), limits):
            ends = [k for k, token in enumerate(row) if token in END_IDS]
            rows.append(row[:max(0, min([limit, *ends[:1]]))])
        return rows

    return decode


# ------------------------------------------------------------------------------------------------ megatron
def megatron_recipe(checkpoint: Path, world_size: int, pipeline: Optional[int] = None):
    """The recipe stored in a training checkpoint, at an inference layout for `world_size` ranks: `pipeline`
    stages and TP = world_size / pipeline when given, else the checkpoint's own TP x PP when it uses every rank,
    else TP = world_size."""
    from megatron.core import dist_checkpointing
    from omegaconf import OmegaConf

    from recipes.compose import to_recipe
    from recipes.schema import Recipe
    from train.checkpoint import ROPE_BASE, UNRECORDED_ROPE_BASE

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
        "train": dict(micro_batch_size=1, global_batch_size=1), "precision": dict(fp8=None),
        "model": dict(rope_base=common.get(ROPE_BASE, UNRECORDED_ROPE_BASE))})  # the base the weights trained with
    return to_recipe(stored, world_size=world_size)


def megatron_decoder(checkpoint: Path, pipeline: Optional[int] = None) -> Callable[..., List[List[int]]]:
    """Batched greedy decoding (greedy_batch) of a training checkpoint at TP x PP = the world size."""
    from train.checkpoint import load_weights, resolve_checkpoint
    from train.trainer import build_inference_model

    directory = resolve_checkpoint(checkpoint)
    recipe = megatron_recipe(directory, torch.distributed.get_world_size(), pipeline)
    chunks = build_inference_model(recipe)
    load_weights(chunks, directory)
    for chunk in chunks:
        chunk.eval()
    return model_decoder(chunks, recipe.model_shape().max_position_embeddings)


def model_decoder(chunks: list, max_length: int) -> Callable[..., List[List[int]]]:
    """Batched greedy decoding of megatron model chunks already built, in eval mode, in the current TP/PP layout
    (one chunk per stage): a checkpoint's inference model (megatron_decoder) or the model a run is training
    (evaluation.during_training). PP1: MegatronKVCache; PP > 1: PipelineForward."""
    from megatron.core import parallel_state

    from train.distributed import rank_device

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        decoder = MegatronKVCache(chunks[0], rank_device())
    else:
        decoder = PipelineForward(chunks, rank_device())
    return functools.partial(greedy_batch, decoder, load_tokenizer("qwen2.5"), max_length=max_length)


class MegatronKVCache:
    """greedy_batch's decoder for one model chunk (PP1, any TP) with megatron's StaticInferenceContext: the
    first call pre-fills every row's shared prefix length, each later call feeds one token per row. GPTModel
    gathers the TP logits of the last position (`runtime_gather_output`), so every TP rank computes the same
    tokens. When rows finish, the survivors' keys and values move to the front of the cache (the context
    reads rows 0..batch-1), so finished rows cost nothing."""

    def __init__(self, model, device: torch.device):
        self.model, self.device = model, device
        self.context, self.rows = None, []

    def reset(self, batch: int, capacity: int) -> None:
        from megatron.core.inference.contexts import StaticInferenceContext

        self.context, self.rows = StaticInferenceContext(batch, capacity), []

    @torch.no_grad()
    def __call__(self, sequences: List[List[int]], rows: List[int]) -> List[int]:
        offset = self.context.sequence_len_offset
        if self.rows and rows != self.rows:
            keep = torch.tensor([self.rows.index(row) for row in rows], device=self.device)
            for key, value in self.context.key_value_memory_dict.values():
                key[:, :len(rows)] = key[:, keep]
                value[:, :len(rows)] = value[:, keep]
        tokens = torch.tensor([sequence[offset:] for sequence in sequences], device=self.device)
        positions = torch.arange(offset, offset + tokens.shape[1], device=self.device).unsqueeze(0)
        logits = self.model(tokens, positions, None, inference_context=self.context, runtime_gather_output=True)
        self.context.sequence_len_offset += tokens.shape[1]
        self.rows = list(rows)
        return logits[:, -1].argmax(dim=-1).tolist()


class PipelineForward:
    """greedy_batch's decoder under pipeline parallelism, without a KV cache: each call runs the whole batch's
    sequences through the pipeline schedule (one microbatch of every active row); the last stage all-gathers
    the logits over TP, takes each row's argmax and broadcasts the tokens to every pipeline rank."""

    def __init__(self, model: list, device: torch.device):
        self.model, self.device = model, device

    def reset(self, batch: int, capacity: int) -> None:
        pass  # nothing is cached between calls

    @torch.no_grad()
    def __call__(self, sequences: List[List[int]], rows: List[int]) -> List[int]:
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        tokens = torch.tensor(sequences, device=self.device)

        def forward_step(data_iterator, model):
            batch = next(data_iterator)
            positions = torch.arange(batch.shape[1], device=self.device).unsqueeze(0)
            return model(batch, positions, None), lambda output, non_loss_data=False: output

        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([tokens]), model=self.model, num_microbatches=1,
            seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
            collect_non_loss_data=True)
        chosen = torch.zeros(tokens.shape[0], dtype=torch.long, device=self.device)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            chosen[:] = gather_from_tensor_model_parallel_region(collected[0])[:, -1].argmax(dim=-1)
        torch.distributed.broadcast(chosen, parallel_state.get_pipeline_model_parallel_last_rank(),
                                    group=parallel_state.get_pipeline_model_parallel_group())
        return chosen.tolist()
