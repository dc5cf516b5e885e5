"""GPU-path settings checked on CPU ranks (gloo): per-token loss under CP and DP, seeds per pipeline stage, and
checkpoints written with overlap_param_gather. Driven by tests/test_gpu_settings.py.

  python tests/gpu_settings_worker.py reference OUT_DIR          # 1 process: losses and gradients of 2 batches
  torchrun --nproc_per_node=2 tests/gpu_settings_worker.py compare OUT_DIR

Batches (tiny shape, 2 layers, vocab 1024, fp32, 4 samples of 64 tokens, 2 micro-batches of 2):
- "cp-rank-empty": every sample's middle half (tokens 16..47) carries no loss. CP2 splits a sequence into 4
  chunks and gives rank 1 the middle two, so that rank's loss token count is 0 in every micro-batch.
- "uneven": 32, 32, 64 and 8 loss tokens per sample, so DP rank 0 (samples 0, 2) holds 96 tokens and rank 1
  (samples 1, 3) 40: a mean of per-rank means differs from the per-token mean.
Rank 0 writes OUT_DIR/compare.json; the pytest side asserts.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from recipes.compose import compose_config, to_recipe
from train.distributed import init_process_group

SEQ, VOCAB, SAMPLES, MICRO = 64, 1024, 4, 2


def recipe(*overrides: str):
    return to_recipe(compose_config([
        "+recipe=tiny", f"model.vocab_size={VOCAB}", "model.transformer_impl=local", "precision.dtype=fp32",
        f"train.seq_length={SEQ}", f"train.global_batch_size={SAMPLES}", "train.train_iters=1",
        "optimizer.lr=1e-3", "optimizer.warmup_iters=0", "optimizer.decay_style=constant",
        "parallel.tp=1", "parallel.pp=1", "parallel.cp=1", "parallel.sp=false", *overrides]))


def batches() -> dict:
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (SAMPLES, SEQ + 1), generator=generator)
    empty_middle = torch.ones(SAMPLES, SEQ)
    empty_middle[:, SEQ // 4: 3 * SEQ // 4] = 0
    uneven = empty_middle.clone()
    uneven[2] = 1
    uneven[3] = 0
    uneven[3, :8] = 1
    return {"cp-rank-empty": (tokens, empty_middle), "uneven": (tokens, uneven)}


def iterators(trainer, tokens, mask):
    """This DP rank's micro-batches (samples rank::dp), one iterator per model chunk."""
    from megatron.core import parallel_state

    dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    micro = trainer.recipe.train.micro_batch_size
    tokens, mask = tokens[rank::dp], mask[rank::dp]
    out = [dict(tokens=tokens[i:i + micro, :-1].contiguous(), labels=tokens[i:i + micro, 1:].contiguous(),
                loss_mask=mask[i:i + micro].contiguous(),
                position_ids=torch.arange(SEQ).expand(len(tokens[i:i + micro]), SEQ).contiguous())
           for i in range(0, len(tokens), micro)]
    return [iter(list(out)) for _ in trainer.model]


def grads(trainer) -> dict:
    return {name: p.main_grad.detach().clone() for name, p in trainer.model[0].module.named_parameters()}


def make_reference(out: Path) -> None:
    from train.trainer import Trainer

    trainer = Trainer(recipe(f"train.micro_batch_size={MICRO}"))
    module = trainer.model[0].module
    result = {"init": {n: p.detach().clone() for n, p in module.named_parameters()}}
    for name, (tokens, mask) in batches().items():
        loss, count = trainer.forward_backward(iterators(trainer, tokens, mask))
        result[name] = dict(loss=loss, tokens=count, grads=grads(trainer))
    torch.save(result, out / "reference.pt")


def per_token_layouts(out: Path, reference: dict, report: dict) -> None:
    """CP2 and DP2 from the reference's initial weights: loss and every gradient against one rank."""
    from megatron.core.utils import get_batch_on_this_cp_rank

    from train.trainer import Trainer

    for layout, overrides in (("cp2", ["parallel.cp=2", f"train.micro_batch_size={MICRO}"]),
                              ("dp2", [f"train.micro_batch_size={MICRO // 2}"])):
        trainer = Trainer(recipe(*overrides))
        with torch.no_grad():
            for name, param in trainer.model[0].module.named_parameters():
                param.copy_(reference["init"][name])
        for name, (tokens, mask) in batches().items():
            loss, count = trainer.forward_backward(iterators(trainer, tokens, mask))
            worst, finite = 0.0, True
            for pname, grad in grads(trainer).items():
                target = reference[name]["grads"][pname]
                finite &= bool(torch.isfinite(grad).all())
                worst = max(worst, ((grad - target).abs().max() / (target.abs().max() + 1e-12)).item())
            report[f"{layout}/{name}"] = dict(loss=loss, reference_loss=reference[name]["loss"], tokens=count,
                                              reference_tokens=reference[name]["tokens"], grad_rel_max=worst,
                                              grads_finite=finite)
        if layout == "cp2":  # tokens with loss on this CP rank in the cp-rank-empty batch
            tokens, mask = batches()["cp-rank-empty"]
            shard = get_batch_on_this_cp_rank({"loss_mask": mask})["loss_mask"]
            counts = [torch.zeros(1) for _ in range(2)]
            torch.distributed.all_gather(counts, shard.sum().reshape(1))
            report["cp2/loss_tokens_per_rank"] = [c.item() for c in counts]


def pipeline_seeds(report: dict) -> None:
    """PP2, fresh init on CPU: each stage draws its weights from its own random stream.

    The first tensor each stage draws is stage 0's word embedding (std 0.02) and stage 1's first attention
    output projection (megatron builds it first; std 0.02 / sqrt(2 x layers)). From one shared seed the
    projection would be the embedding's first draws rescaled (measured: cosine similarity 1.0).
    """
    from megatron.core import parallel_state

    from train.trainer import Trainer

    trainer = Trainer(recipe("parallel.pp=2", f"train.micro_batch_size={MICRO}"))
    params = dict(trainer.model[0].module.named_parameters())
    proj = params["decoder.layers.0.self_attention.linear_proj.weight"].detach().flatten()
    first = params["embedding.word_embeddings.weight"] if parallel_state.is_pipeline_first_stage() else proj
    both = [torch.empty_like(proj) for _ in range(2)]
    torch.distributed.all_gather(both, first.detach().flatten()[:proj.numel()].contiguous())
    report["pp2/first_draws_cosine"] = torch.nn.functional.cosine_similarity(both[0], both[1], dim=0).item()


def overlap_param_gather_save(out: Path, report: dict) -> None:
    """DP2 + distributed optimizer: one step with and without overlap_param_gather, then the overlapped
    trainer saves a checkpoint; the saved weights must equal the non-overlapped trainer's updated weights."""
    from train.checkpoint import CheckpointManager, TrainingState, load_weights
    from train.trainer import Trainer

    tokens, mask = batches()["uneven"]
    after = {}
    for overlap in (False, True):
        trainer = Trainer(recipe(f"train.micro_batch_size={MICRO // 2}", "parallel.distributed_optimizer=true",
                                 f"parallel.overlap_param_gather={overlap}", f"parallel.overlap_grad_reduce={overlap}"))
        loss, _ = trainer.forward_backward(iterators(trainer, tokens, mask))
        trainer.optimizer_step(1, loss)
        if overlap:
            manager = CheckpointManager(out / "overlap-run", keep_last=1)
            path = manager.save(trainer, TrainingState(step=1, consumed_samples=SAMPLES), {})
            load_weights(trainer.model, path)  # the model now holds exactly what the checkpoint stored
        after[overlap] = {n: p.detach().clone() for n, p in trainer.model[0].module.named_parameters()}
        moved = max((after[overlap][n] - p).abs().max().item() for n, p in reference_init(out).items())
        report[f"overlap={overlap}/moved_from_init"] = moved
    report["overlap/saved_vs_plain_max_abs_diff"] = max(
        (after[True][n] - after[False][n]).abs().max().item() for n in after[False])


def reference_init(out: Path) -> dict:
    return torch.load(out / "reference.pt")["init"]


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    init_process_group()
    if mode == "reference":
        make_reference(out)
    else:
        report = {}
        per_token_layouts(out, torch.load(out / "reference.pt"), report)
        pipeline_seeds(report)
        overlap_param_gather_save(out, report)
        if torch.distributed.get_rank() == 0:
            (out / "compare.json").write_text(json.dumps(report, indent=1))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
