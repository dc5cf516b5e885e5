"""Greedy decoding for evaluation, from a megatron checkpoint (any TP/PP layout, one process or torchrun) or a
Hugging Face directory (transformers). Both run the same loop (`greedy`): a full forward over the sequence
per new token, argmax of the last position, stop at end-of-text/FIM-pad ids or when the decoded text holds a
stop sequence. No KV cache: O(n^2) in the generated length, acceptable for function bodies of a few dozen lines,
and one code path whose tokens are comparable between the two back ends.

Megatron: the model is built by train.trainer.Trainer (the training run's own recipe -> megatron path) from
the recipe the checkpoint stores, at TP x PP = the world size (one process: TP1/PP1; torch_dist reshards on
load), with DP/CP 1 and sequence parallelism off (prompts have arbitrary lengths). Every rank feeds the same
tokens; the last pipeline stage all-gathers the vocabulary-parallel logits over TP, takes the argmax and
broadcasts the token to every rank.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from data.tokenizer import EOD, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, IM_END, SPECIAL_TOKENS, load_tokenizer
from evaluation.tasks import Problem, truncate

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
    from transformers import AutoModelForCausalLM

    if not (Path(directory) / "config.json").is_file():
        raise ValueError(f"{directory} is not a Hugging Face model directory (no config.json); a megatron "
                         "checkpoint is evaluated with --checkpoint")
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()

    @torch.no_grad()
    def next_token(ids: List[int]) -> int:
        logits = model(input_ids=torch.tensor([ids])).logits
        return int(logits[0, -1].argmax())

    return next_token, int(model.config.max_position_embeddings)


# ------------------------------------------------------------------------------------------------ megatron
def megatron_recipe(checkpoint: Path, world_size: int):
    """The recipe stored in a training checkpoint, at an inference layout for `world_size` ranks."""
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
    if tp * pp != world_size:
        tp, pp = (1, 1) if world_size == 1 else (world_size, 1)
    stored = OmegaConf.merge(OmegaConf.structured(Recipe), stored, {
        "parallel": dict(tp=tp, pp=pp, vpp=1, cp=1, sp=False, distributed_optimizer=False),
        "train": dict(micro_batch_size=1, global_batch_size=1), "precision": dict(fp8=None)})
    return to_recipe(stored, world_size=world_size)


def megatron_next_token(checkpoint: Path) -> tuple[Callable[[List[int]], int], int]:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from train.checkpoint import load_weights, resolve_checkpoint
    from train.trainer import Trainer

    directory = resolve_checkpoint(checkpoint)
    trainer = Trainer(megatron_recipe(directory, torch.distributed.get_world_size()), train_iters=1)
    load_weights(trainer.model, directory)
    for chunk in trainer.model:
        chunk.eval()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    last_stage = parallel_state.get_pipeline_model_parallel_last_rank()

    def forward_step(data_iterator, model):
        tokens = next(data_iterator)
        positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0)
        return model(tokens, positions, None), lambda output, non_loss_data=False: output

    @torch.no_grad()
    def next_token(ids: List[int]) -> int:
        tokens = torch.tensor([ids], device=device)
        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([tokens]), model=trainer.model,
            num_microbatches=1, seq_length=len(ids), micro_batch_size=1, forward_only=True,
            collect_non_loss_data=True)
        token = torch.zeros(1, dtype=torch.long, device=device)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            logits = gather_from_tensor_model_parallel_region(collected[0])  # [1, s, vocab]
            token[0] = logits[0, -1].argmax()
        torch.distributed.broadcast(token, last_stage, group=parallel_state.get_pipeline_model_parallel_group())
        return int(token[0])

    return next_token, trainer.recipe.model_shape().max_position_embeddings
