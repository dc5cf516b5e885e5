"""Parallel-equivalence worker: every layout against a 1-rank reference, many layouts in one torchrun world.

  python tests/equivalence/worker.py reference OUT_DIR            # 1 process: TP=PP=CP=DP=1
  torchrun --nproc_per_node=N tests/equivalence/worker.py compare OUT_DIR LAYOUT [LAYOUT ...]

A LAYOUT is `tp2`, `tp2sp`, `pp2`, `pp2vpp2`, `dp2`, `dp2distopt`, `cp2`, `tp2pp2`, `tp2cp2`... with a
`-tied`/`-untied` suffix, optionally `-bf16` (bf16 params, the shipped recipes' precision, against the fp32
reference) or a negative control: `-wrongshard` (SwiGLU's [gate; up] split as one matrix), `-wrongsplit` (the
reference layers loaded into the wrong pipeline stage), `-wrongcp` (core attention masks on contiguous chunk
positions instead of megatron's load-balanced ones). `cp2mask` checks SDPA core attention with an attention
mask at CP2 against full-sequence attention (the gathered K/V come in load-balanced order, the mask does not).
Both modes build the model through train.trainer.Trainer from the tiny recipe (4 layers so PP2 x VPP2 fits,
vocab 1024, fp32) and run 3 optimizer steps of 4 micro-batches on the same global batches.
The comparison copies the reference's initial weights into the shards with this file's OWN sharding map
(written from the Qwen2/megatron layout, not megatron's code), then checks per step: global loss, every
parameter's reduced gradient shard (relative to its largest element), and parameters after the step.
Rank 0 writes OUT_DIR/result-LAYOUT.json with the worst figures and the TP/PP/VPP/CP/DP sizes read back from
megatron's parallel_state (so a layout that silently did not take effect is caught); pytest asserts tolerances.
"""
from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path

import torch

from recipes.compose import compose_config, to_recipe
from train.distributed import init_process_group

STEPS, MICROBATCHES, SEQ, VOCAB, LAYERS = 3, 4, 64, 1024, 4
# Adam divides by sqrt(v) + eps: with the usual 1e-8 its first step is ~lr * sign(g), so fp32 summation-order
# noise in near-zero gradients (|g| ~ 1e-8) becomes parameter differences of ~2.5e-6 that later steps inherit
# (measured: step-2 grads 2e-5 off while step-0 grads match to 6e-7). eps 1e-3 bounds d(update)/dg by lr/eps.
ADAM_EPS = 1e-3


def recipe_for(layout: str):
    spec = dict(re.findall(r"(tp|pp|vpp|cp|dp)(\d+)", layout))
    tp, pp, vpp, cp = (int(spec.get(k, 1)) for k in ("tp", "pp", "vpp", "cp"))
    world = torch.distributed.get_world_size()
    dp = world // (tp * pp * cp)
    global_batch = 8
    overrides = [
        "+recipe=tiny", f"model.num_layers={LAYERS}", f"model.vocab_size={VOCAB}",
        f"model.tied_embeddings={'-untied' not in layout}", "model.transformer_impl=local",
        f"precision.dtype={'bf16' if '-bf16' in layout else 'fp32'}", f"train.seq_length={SEQ}", f"train.global_batch_size={global_batch}",
        f"train.micro_batch_size={global_batch // (MICROBATCHES * dp)}", f"train.train_iters={STEPS}",
        f"parallel.tp={tp}", f"parallel.pp={pp}", f"parallel.vpp={vpp}", f"parallel.cp={cp}",
        f"parallel.sp={'sp' in layout.split('-')[0]}", f"parallel.distributed_optimizer={'distopt' in layout}",
        "optimizer.lr=1e-3", "optimizer.warmup_iters=0", "optimizer.decay_style=constant",
        "optimizer.clip_grad=1.0", "optimizer.weight_decay=0.01", f"optimizer.adam_eps={ADAM_EPS}",
    ]
    return to_recipe(compose_config(overrides))


def global_batches():
    generator = torch.Generator().manual_seed(2024)
    return [torch.randint(0, VOCAB, (8, SEQ + 1), generator=generator) for _ in range(STEPS)]


def data_iterators(trainer, batch):
    """This DP rank's micro-batches of one global batch, one identical iterator per model chunk."""
    from megatron.core import parallel_state

    dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    micro = trainer.recipe.train.micro_batch_size
    samples = batch[rank::dp]
    micro_batches = []
    for start in range(0, len(samples), micro):
        chunk = samples[start:start + micro]
        micro_batches.append(dict(
            tokens=chunk[:, :-1].contiguous(), labels=chunk[:, 1:].contiguous(),
            loss_mask=torch.ones(chunk.shape[0], SEQ),
            position_ids=torch.arange(SEQ).expand(chunk.shape[0], SEQ).contiguous()))
    return [iter(list(micro_batches)) for _ in trainer.model]


def run_steps(trainer, record):
    history = []
    for step, batch in enumerate(global_batches()):
        loss, _ = trainer.forward_backward(data_iterators(trainer, batch))
        record("grad", step)
        trainer.optimizer_step(step, loss)
        record("param", step)
        history.append(loss)
    return history


# ---- the independent sharding map ---------------------------------------------------------------
def layer_offset(trainer, chunk_index: int) -> int:
    from megatron.core import parallel_state

    pp, vpp = trainer.recipe.parallel.pp, trainer.recipe.parallel.vpp
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    if WRONG_SPLIT:
        pp_rank = pp - 1 - pp_rank  # negative control: every stage gets another stage's layers
    return chunk_index * LAYERS // vpp + pp_rank * LAYERS // (pp * vpp)


def reference_name(trainer, chunk_index: int, name: str) -> str:
    if name.startswith("decoder.layers."):
        parts = name.split(".")
        parts[2] = str(int(parts[2]) + layer_offset(trainer, chunk_index))
        return ".".join(parts)
    if name == "output_layer.weight" and trainer.shape.tied_embeddings:
        return "embedding.word_embeddings.weight"  # the last stage's copy of the tied embedding
    return name


def shard(name: str, full: torch.Tensor, tp: int, tp_rank: int, wrong_shard: bool) -> torch.Tensor:
    if tp == 1 or "layernorm" in name:
        return full
    if "linear_fc1.weight" in name and not wrong_shard:
        gate, up = full.chunk(2, dim=0)  # each half of SwiGLU's [gate; up] is split on its own
        return torch.cat([gate.chunk(tp, 0)[tp_rank], up.chunk(tp, 0)[tp_rank]])
    if "linear_proj.weight" in name or "linear_fc2.weight" in name:
        return full.chunk(tp, dim=1)[tp_rank]  # row-parallel: input dim
    return full.chunk(tp, dim=0)[tp_rank]  # column-parallel (QKV groups are contiguous), vocab rows


def local_parameters(trainer):
    for index, chunk in enumerate(trainer.model):
        for name, param in chunk.module.named_parameters():
            yield index, name, param


WRONG_SPLIT = False


def contiguous_positions(local_len: int, cp_rank: int, cp_size: int, device) -> torch.Tensor:
    """Negative control for model.layers.load_balanced_positions: as if CP rank r held tokens [r*n, (r+1)*n)."""
    return torch.arange(cp_rank * local_len, (cp_rank + 1) * local_len, device=device)


def parallel_sizes() -> dict:
    from megatron.core import parallel_state as ps

    return dict(tp=ps.get_tensor_model_parallel_world_size(), pp=ps.get_pipeline_model_parallel_world_size(),
                vpp=ps.get_virtual_pipeline_model_parallel_world_size() or 1,
                cp=ps.get_context_parallel_world_size(), dp=ps.get_data_parallel_world_size())


@contextlib.contextmanager
def negative_controls(layout: str):
    """Install the defect a negative-control layout names (see the module docstring) for one comparison."""
    global WRONG_SPLIT
    import model.layers

    balanced = model.layers.load_balanced_positions
    WRONG_SPLIT = "-wrongsplit" in layout
    if "-wrongcp" in layout:
        model.layers.load_balanced_positions = contiguous_positions
    try:
        yield
    finally:
        model.layers.load_balanced_positions = balanced
        WRONG_SPLIT = False


def compare(out_dir: Path, layout: str) -> None:
    with negative_controls(layout):
        _compare(out_dir, layout)


def _compare(out_dir: Path, layout: str) -> None:
    from megatron.core import parallel_state

    from train.trainer import Trainer

    trainer_recipe = recipe_for(layout)
    trainer = Trainer(trainer_recipe)
    reference = torch.load(out_dir / f"reference-{'untied' if '-untied' in layout else 'tied'}.pt")
    tp, tp_rank = trainer_recipe.parallel.tp, parallel_state.get_tensor_model_parallel_rank()
    wrong = "-wrongshard" in layout

    def expected(kind, step, index, name):
        full = reference[kind][step] if kind != "init" else reference["init"]
        return shard(name, full[reference_name(trainer, index, name)], tp, tp_rank, wrong)

    with torch.no_grad():
        for index, name, param in local_parameters(trainer):
            param.copy_(expected("init", None, index, name))
    for chunk in trainer.model:  # the distributed optimizer keeps fp32 master copies: refresh them
        chunk.broadcast_params()
    trainer.optimizer.reload_model_params()

    worst = {"grad_rel": [0.0] * STEPS, "param_abs": [0.0] * STEPS, "checked": 0}
    grads_are_full = not trainer_recipe.parallel.distributed_optimizer

    def record(kind, step):
        for index, name, param in local_parameters(trainer):
            if kind == "grad" and not grads_are_full:
                continue  # reduce-scattered: only this rank's shard is reduced; params are compared instead
            actual = (param.main_grad if kind == "grad" else param).detach().float()
            target = expected(kind, step, index, name).float()
            error = (actual - target).abs().max().item()
            if kind == "grad":
                relative = error / (target.abs().max().item() + 1e-12)
                worst["grad_rel"][step] = max(worst["grad_rel"][step], relative)
                worst["checked"] += 1
            else:
                worst["param_abs"][step] = max(worst["param_abs"][step], error)

    losses = run_steps(trainer, record)
    summary = torch.tensor([worst["grad_rel"], worst["param_abs"]], dtype=torch.float64)
    torch.distributed.all_reduce(summary, op=torch.distributed.ReduceOp.MAX)
    checked = torch.tensor([worst["checked"]])
    torch.distributed.all_reduce(checked)
    if torch.distributed.get_rank() == 0:
        result = dict(layout=layout, losses=losses, reference_losses=reference["losses"],
                      grad_rel_max=summary[0].tolist(), param_abs_max=summary[1].tolist(),
                      grads_checked=int(checked.item()), sizes=parallel_sizes(),
                      dp=parallel_state.get_data_parallel_world_size())
        (out_dir / f"result-{layout}.json").write_text(json.dumps(result, indent=1))
        print(f"[equivalence] {layout}: loss |d| max "
              f"{max(abs(a - b) for a, b in zip(losses, reference['losses'])):.2e}, grad rel max "
              f"{result['grad_rel_max']}, param |d| max {result['param_abs_max']}", flush=True)


def check_cp_attention_mask(out_dir: Path) -> None:
    """SDPA core attention at CP2 with a document mask equals full-sequence masked attention at this rank's rows.

    The reference is written out here (scores, mask, softmax); the CP side gets its q/k/v rows and the mask the
    way a real batch does (megatron's get_batch_on_this_cp_rank cuts the mask's query dim only)."""
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig
    from megatron.core.utils import get_batch_on_this_cp_rank

    from model.layers import SDPACoreAttention, load_balanced_positions
    from train.distributed import init_model_parallel

    init_model_parallel(cp=2)
    seq, batch, heads, groups, dim = 16, 2, 4, 2, 8
    generator = torch.Generator().manual_seed(7)
    q = torch.randn(seq, batch, heads, dim, generator=generator)
    k, v = (torch.randn(seq, batch, groups, dim, generator=generator) for _ in range(2))
    document = torch.tensor([0] * 5 + [1] * 6 + [2] * 5)  # three documents in one row
    masked = (document[:, None] != document[None, :]).expand(batch, 1, seq, seq)  # True = masked out
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    scores = torch.einsum("sbhd,tbhd->bhst", q, k.repeat_interleave(heads // groups, dim=2)) / dim ** 0.5
    scores = scores.masked_fill(~(causal & ~masked), float("-inf"))
    full = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v.repeat_interleave(heads // groups, dim=2))

    rank = parallel_state.get_context_parallel_rank()
    rows = load_balanced_positions(seq // 2, rank, 2, "cpu")
    local_mask = get_batch_on_this_cp_rank({"attention_mask": masked})["attention_mask"]
    config = TransformerConfig(num_layers=1, hidden_size=heads * dim, num_attention_heads=heads,
                               num_query_groups=groups, kv_channels=dim, attention_dropout=0.0, context_parallel_size=2)
    attention = SDPACoreAttention(config, layer_number=1, attn_mask_type=None, attention_type="self")
    out = attention(q[rows], k[rows], v[rows], local_mask)
    error = torch.tensor([(out - full[rows].reshape(seq // 2, batch, heads * dim)).abs().max().item()])
    torch.distributed.all_reduce(error, op=torch.distributed.ReduceOp.MAX)
    if torch.distributed.get_rank() == 0:
        (out_dir / "result-cp2mask.json").write_text(json.dumps(dict(layout="cp2mask", max_abs_error=error.item())))
        print(f"[equivalence] cp2mask: max |d| {error.item():.2e}", flush=True)


def make_reference(out_dir: Path) -> None:
    from train.trainer import Trainer

    for tying in ("tied", "untied"):
        trainer = Trainer(recipe_for(f"ref-{tying}"))
        module = trainer.model[0].module
        init = {name: param.detach().clone() for name, param in module.named_parameters()}
        grads, params = [], []

        def record(kind, step):
            source = {name: (p.main_grad if kind == "grad" else p).detach().clone()
                      for name, p in module.named_parameters()}
            (grads if kind == "grad" else params).append(source)

        losses = run_steps(trainer, record)
        torch.save(dict(init=init, grad=grads, param=params, losses=losses), out_dir / f"reference-{tying}.pt")
        print(f"[equivalence] reference {tying}: losses {losses}", flush=True)


def main() -> None:
    mode, out_dir, layouts = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    init_process_group()
    if mode == "reference":
        make_reference(out_dir)
    else:
        for layout in layouts:
            check_cp_attention_mask(out_dir) if layout == "cp2mask" else compare(out_dir, layout)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
