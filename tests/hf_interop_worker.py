"""torchrun worker: an imported checkpoint loaded into TP2 and PP2 layouts, logits written for the test to compare.

  torchrun --nproc_per_node=2 tests/hf_interop_worker.py WORK_DIR

WORK_DIR/cases.json lists {"name", "checkpoint", "tied", "tp", "pp"}; WORK_DIR/tokens.pt holds the tokens
(loaded with weights_only=True). Each case builds the model through train.trainer.Trainer (the training run's own
path: recipe -> megatron args -> DDP chunks), loads the checkpoint with train.checkpoint.load_weights (megatron
reshards the TP1/PP1 files on load) and runs a forward pass:
- TP2: each rank holds half the vocabulary's logits; they are all-gathered over the TP group.
- PP2: megatron's pipeline schedule (forward_only) moves the activations from stage 0 to stage 1; the logits
  exist on the last stage only, which collects them.
The rank holding the full logits writes WORK_DIR/logits-NAME.pt.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from recipes.compose import compose_config, to_recipe
from train.distributed import init_process_group


def recipe_for(case: dict, seq: int, batch: int):
    overrides = [
        "+recipe=0.5b", "model.rope_base=1000000",  # the imports' rope_theta (a fresh file stage: 10,000)
        "model.num_layers=2", "model.vocab_size=1024", f"model.tied_embeddings={case['tied']}",
        "model.transformer_impl=local", "precision.dtype=fp32", f"parallel.tp={case['tp']}",
        f"parallel.pp={case['pp']}", "parallel.vpp=1", "parallel.cp=1", "parallel.sp=false",
        "parallel.distributed_optimizer=false", "parallel.overlap_param_gather=false",
        f"train.seq_length={seq}", f"train.micro_batch_size={batch}",
        f"train.global_batch_size={batch}",
    ]
    return to_recipe(compose_config(overrides), world_size=torch.distributed.get_world_size())


def forward_logits(trainer, tokens: torch.Tensor):
    """Full-vocabulary logits on the rank that has them, else None."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    batch, seq = tokens.shape
    positions = torch.arange(seq).expand(batch, seq).contiguous()
    for chunk in trainer.model:
        chunk.eval()

    def forward_step(data_iterator, model):
        micro = next(data_iterator)
        output = model(micro["tokens"], micro["position_ids"], None)
        return output, lambda output_tensor, non_loss_data=False: output_tensor

    with torch.no_grad():
        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([dict(tokens=tokens, position_ids=positions)]),
            model=trainer.model, num_microbatches=1, seq_length=seq, micro_batch_size=batch,
            forward_only=True, collect_non_loss_data=True)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    logits = gather_from_tensor_model_parallel_region(collected[0])  # vocab-parallel halves -> full rows
    return logits if parallel_state.get_tensor_model_parallel_rank() == 0 else None


def main() -> None:
    from train.checkpoint import load_weights
    from train.trainer import Trainer

    work = Path(sys.argv[1])
    init_process_group()
    tokens = torch.load(work / "tokens.pt", weights_only=True)
    for case in json.loads((work / "cases.json").read_text()):
        trainer = Trainer(recipe_for(case, seq=tokens.shape[1], batch=tokens.shape[0]))
        load_weights(trainer.model, Path(case["checkpoint"]))
        logits = forward_logits(trainer, tokens)
        if logits is not None:
            torch.save(logits, work / f"logits-{case['name']}.pt")
            print(f"[hf-interop] {case['name']}: rank {torch.distributed.get_rank()} wrote logits "
                  f"{tuple(logits.shape)}", flush=True)
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
