"""DPO parallel equivalence: each layout's DPO loss, metrics, reference log-probs and gradients equal one rank's.

  python tests/equivalence/dpo_worker.py reference OUT_DIR
  torchrun --nproc_per_node=2 tests/equivalence/dpo_worker.py compare OUT_DIR LAYOUT [LAYOUT ...]

Tiny shape with 4 layers, vocab 1024, fp32, untied, built by train.trainer.Trainer with stage=dpo (beta 0.1,
label smoothing 0.1, NLL weight 0.2: every term of the loss). A global batch is 8 pairs of 64-token rows whose
chosen and rejected rows share a prompt of 8..23 tokens and have responses of 8..40 tokens then padding, so
response masks differ per row and CP ranks hold different numbers of response tokens. The reference's
log-probs are the 1-rank model's own (Trainer.forward_only with the DPO objective's reference_step) plus
N(0, 2^2) noise, so the margins are O(1) and not 0. The one-rank run records: the reference log-probs, then for 2 Adam steps the loss, the four metrics and
every gradient. A layout gets the same initial weights through tests/equivalence/worker.py's sharding map.
`-nocpsum` (negative control) replaces train.objectives.dpo.sequence_logps with one that skips the CP all-reduce.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from recipes.compose import compose_config, to_recipe  # noqa: E402
from tests.equivalence.worker import ADAM_EPS, LAYERS, SEQ, VOCAB, local_parameters, reference_name, shard  # noqa: E402
from train.distributed import init_process_group  # noqa: E402

STEPS, PAIRS, MICROBATCHES = 2, 8, 4


def recipe_for(layout: str):
    spec = dict(re.findall(r"(tp|pp|vpp|cp|dp)(\d+)", layout))
    tp, pp, vpp, cp = (int(spec.get(k, 1)) for k in ("tp", "pp", "vpp", "cp"))
    dp = torch.distributed.get_world_size() // (tp * pp * cp)
    return to_recipe(compose_config([
        "+recipe=tiny", "stage=dpo", f"model.num_layers={LAYERS}", f"model.vocab_size={VOCAB}",
        "model.tied_embeddings=false", "model.transformer_impl=local", "precision.dtype=fp32",
        f"train.seq_length={SEQ}", f"train.global_batch_size={PAIRS}",
        f"train.micro_batch_size={PAIRS // (MICROBATCHES * dp)}", f"train.train_iters={STEPS}",
        f"parallel.tp={tp}", f"parallel.pp={pp}", f"parallel.vpp={vpp}", f"parallel.cp={cp}",
        f"parallel.sp={'sp' in layout.split('-')[0]}", f"parallel.distributed_optimizer={'distopt' in layout}",
        "stage.dpo_beta=0.1", "stage.dpo_label_smoothing=0.1", "stage.dpo_nll_weight=0.2",
        "optimizer.lr=1e-3", "optimizer.warmup_iters=0", "optimizer.decay_style=constant", "optimizer.clip_grad=1.0",
        "optimizer.weight_decay=0.01", f"optimizer.adam_eps={ADAM_EPS}",
    ]))


def global_batches():
    """STEPS global batches of PAIRS pairs: tokens/labels/loss_mask/position_ids [PAIRS, 2, SEQ]."""
    generator = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (PAIRS, 2, SEQ + 1), generator=generator)
        mask = torch.zeros(PAIRS, 2, SEQ)
        for pair in range(PAIRS):
            prompt = int(torch.randint(8, 24, (1,), generator=generator))
            ids[pair, 1, :prompt] = ids[pair, 0, :prompt]  # one prompt, two responses
            for row in range(2):
                length = int(torch.randint(8, 41, (1,), generator=generator))
                mask[pair, row, prompt - 1:prompt - 1 + length] = 1.0  # label i is token i + 1
        batches.append(dict(tokens=ids[..., :-1].contiguous(), labels=ids[..., 1:].contiguous(), loss_mask=mask,
                            position_ids=torch.arange(SEQ).expand(PAIRS, 2, SEQ).contiguous(),
                            pair=torch.arange(PAIRS), ref_logps=torch.zeros(PAIRS, 2, dtype=torch.float64)))
    return batches


def data_iterators(trainer, batch):
    from megatron.core import parallel_state

    dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    micro = trainer.recipe.train.micro_batch_size
    share = PAIRS // dp
    mine = {key: value[rank * share:(rank + 1) * share] for key, value in batch.items()}
    micro_batches = [{key: value[start:start + micro] for key, value in mine.items()}
                     for start in range(0, share, micro)]
    return [iter(list(micro_batches)) for _ in trainer.model]


def reference_logps(trainer, batches) -> list:
    """Per global batch, the [PAIRS, 2] log-probs the reference pass reports (every layout all-reduces them)."""
    out = []
    for batch in batches:
        table = torch.zeros(PAIRS, 3, dtype=torch.float64)
        for report in trainer.forward_only(data_iterators(trainer, batch), trainer.objective.reference_step):
            rows = report["reference"].double()
            table.index_add_(0, rows[:, 0].long(), torch.cat([rows[:, 1:], torch.ones(len(rows), 1)], 1))
        torch.distributed.all_reduce(table)
        out.append(table[:, :2] / table[:, 2:])
    return out


def run_steps(trainer, batches, references, record):
    history = []
    for step, (batch, reference) in enumerate(zip(batches, references)):
        batch = dict(batch, ref_logps=reference)
        loss, _ = trainer.forward_backward(data_iterators(trainer, batch))
        record(step)
        trainer.optimizer_step(step, loss)
        history.append(dict(loss=loss, **trainer.last_metrics))
    return history


def make_reference(out_dir: Path) -> None:
    from train.trainer import Trainer

    trainer = Trainer(recipe_for("ref"))
    module = trainer.model[0].module
    init = {name: param.detach().clone() for name, param in module.named_parameters()}
    batches = global_batches()
    logps = reference_logps(trainer, batches)
    noise = torch.Generator().manual_seed(11)
    references = [values + 2.0 * torch.randn(values.shape, generator=noise, dtype=torch.float64) for values in logps]
    grads = []
    history = run_steps(trainer, batches, references, lambda step: grads.append(
        {name: p.main_grad.detach().clone() for name, p in module.named_parameters()}))
    torch.save(dict(init=init, grads=grads, history=history, logps=logps, references=references),
               out_dir / "reference.pt")
    print(f"[dpo equivalence] reference: {history}", flush=True)


def compare(out_dir: Path, layout: str) -> None:
    from megatron.core import parallel_state

    import train.objectives.dpo
    from train.trainer import Trainer

    original = train.objectives.dpo.sequence_logps
    if "-nocpsum" in layout:
        train.objectives.dpo.sequence_logps = lambda loss, mask: (
            -(loss.double() * mask.reshape(loss.shape).double()).sum(1), mask.reshape(loss.shape).double().sum(1))
    try:
        recipe = recipe_for(layout)
        trainer = Trainer(recipe)
        saved = torch.load(out_dir / "reference.pt")
        tp, tp_rank = recipe.parallel.tp, parallel_state.get_tensor_model_parallel_rank()

        def expected(full, index, name):
            return shard(name, full[reference_name(trainer, index, name)], tp, tp_rank, False)

        with torch.no_grad():
            for index, name, param in local_parameters(trainer):
                param.copy_(expected(saved["init"], index, name))
        for chunk in trainer.model:
            chunk.broadcast_params()
        trainer.optimizer.reload_model_params()
        batches = global_batches()
        logps = reference_logps(trainer, batches)
        logp_error = max(float((a - b).abs().max()) for a, b in zip(logps, saved["logps"]))
        worst = {"grad_rel": 0.0, "checked": 0}

        def record(step):
            if recipe.parallel.distributed_optimizer:
                return  # reduce-scattered: the losses of the later step carry the check
            for index, name, param in local_parameters(trainer):
                target = expected(saved["grads"][step], index, name)
                error = (param.main_grad - target).abs().max().item() / (target.abs().max().item() + 1e-12)
                worst["grad_rel"] = max(worst["grad_rel"], error)
                worst["checked"] += 1

        history = run_steps(trainer, batches, saved["references"], record)
    finally:
        train.objectives.dpo.sequence_logps = original
    summary = torch.tensor([worst["grad_rel"], logp_error], dtype=torch.float64)
    torch.distributed.all_reduce(summary, op=torch.distributed.ReduceOp.MAX)
    checked = torch.tensor([worst["checked"]])
    torch.distributed.all_reduce(checked)
    if torch.distributed.get_rank() == 0:
        result = dict(layout=layout, history=history, reference=saved["history"], grad_rel_max=summary[0].item(),
                      logp_abs_max=summary[1].item(), grads_checked=int(checked.item()))
        (out_dir / f"result-{layout}.json").write_text(json.dumps(result, indent=1))
        print(f"[dpo equivalence] {layout}: {result}", flush=True)


def main() -> None:
    mode, out_dir, layouts = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    init_process_group()
    if mode == "reference":
        make_reference(out_dir)
    else:
        for layout in layouts:
            compare(out_dir, layout)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
