"""The checks of bench/gpu_acceptance.py, one per process: `python bench/gpu_checks.py CHECK OUT.json`.

Each check writes {"passed": bool, ...figures} to OUT.json. Tolerances, and why:
- fp32 logits (TF32 off) vs transformers: <= 1e-5 of the largest logit, the CPU parity suite's threshold (docs/
  testing.md); TE's unfused fp32 attention and cuBLAS change only summation order.
- bf16 logits: <= 4e-2 of the largest logit and top-1 agreement >= 95 % (bf16 keeps 8 mantissa bits; measured on
  CPU between bf16 runs of the two implementations: 0.02-0.04 absolute, 97-99 % top-1).
- FP8 training: mean loss over the last 10 of 30 steps within 2 % of bf16's (FP8 GEMMs with delayed scaling
  typically track bf16 to well under 1 % over such windows), every loss finite.
Throughput follows megatron's FLOP convention (model/accounting.py: full attention square, no recompute), the
card's dense bf16 peak from recipes/gpus.py; FP8 MFU is stated against the same bf16 peak.
Only the `install` check runs before the project's requirements import; it uses the standard library alone.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from gpu_helpers import build_on_gpu, compare_logits, compose_recipe, gpu_card, init_world, synthetic_batches

REPO = Path(__file__).resolve().parents[1]
FP32_REL, BF16_REL, BF16_TOP1 = 1e-5, 4e-2, 0.95
FP8_LOSS_REL = 0.02
STEPS, LAST = 30, 10


# ---------------------------------------------------------------------------------------------- install
def check_install() -> dict:
    """pip-install whatever does not import yet; every step timed."""
    steps, started = [], time.perf_counter()

    def pip(*args: str) -> None:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], cwd=REPO,
                              capture_output=True, text=True)
        steps.append({"pip install": " ".join(args), "seconds": round(time.perf_counter() - t0, 1),
                      "ok": done.returncode == 0, "tail": done.stderr[-800:] if done.returncode else ""})
        if done.returncode:
            raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stderr[-2000:]}")

    def cuda_torch() -> bool:
        probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
        return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0

    try:
        if not cuda_torch():
            pip("torch==2.13.0")  # PyPI's Linux x86-64 wheel of torch is the CUDA build
        pip("-r", "requirements-common.txt")
        pip("--no-deps", "-e", ".")
        if importlib.util.find_spec("transformer_engine") is None:
            pip("--no-build-isolation", "transformer-engine[pytorch]")
        if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
            pip("-r", "requirements-gpu.txt")
    except RuntimeError as error:
        return {"passed": False, "steps": steps, "error": str(error)[-1500:]}
    return {"passed": cuda_torch(), "steps": steps, "seconds_total": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------------------------------------- settings
def check_settings() -> dict:
    import torch

    from train.distributed import set_launch_environment

    recipe = compose_recipe("+recipe=7b", "stage=repo")  # TP2 CP4: the launcher must set the variable
    os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    initialised_before = torch.cuda.is_initialized()
    set_launch_environment(recipe)
    out = {"cuda_initialised_before_launcher": initialised_before,
           "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")}
    from model.config import grad_accumulation_fusion_available, transformer_config
    from model.families import get_shape
    from train.megatron_args import transformer_runtime_kwargs
    from train.objectives.lm import forward_step

    init_world()
    shape = get_shape("tiny", vocab_size=256)
    out["apex_fused_wgrad"] = grad_accumulation_fusion_available()
    out["te_grad_accumulation_fusion"] = transformer_config(shape, use_te=True).gradient_accumulation_fusion
    out["cp_comm_type"] = transformer_runtime_kwargs(recipe)["cp_comm_type"]
    model = build_on_gpu(shape, "local", torch.float32)
    batch = dict(tokens=torch.zeros(1, 32, dtype=torch.long), labels=torch.zeros(1, 32, dtype=torch.long),
                 loss_mask=torch.ones(1, 32), position_ids=torch.arange(32)[None])
    loss, _ = forward_step(iter([{k: v.pin_memory() for k, v in batch.items()}]), model)
    out["loss_device"] = str(loss.device)
    out["passed"] = (not initialised_before and out["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
                     and out["te_grad_accumulation_fusion"] == out["apex_fused_wgrad"]
                     and out["cp_comm_type"] == "p2p" and loss.is_cuda)
    return out


# ---------------------------------------------------------------------------------------------- numerics
def check_te_numerics() -> dict:
    import torch

    from hf_interop.names import hf_to_megatron, load_into_megatron
    from model.families import get_shape
    from tests.hf_reference import random_hf_model, random_tokens

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    init_world()
    out, passed = {}, True
    for name, shape in (("7b-untied-2L", get_shape("7b", num_layers=2)), ("0.5b-tied-2L", get_shape("0.5b", num_layers=2))):
        hf = random_hf_model(shape, seed=0).cuda()
        tokens, positions = random_tokens(shape, 2, 128, device="cuda")
        state = hf.state_dict()
        for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            with torch.no_grad():
                reference = hf.to(dtype)(tokens).logits  # eager attention (tests.hf_reference)
                logits = {}
                for impl in ("transformer_engine", "local"):
                    model = build_on_gpu(shape, impl, dtype)
                    load_into_megatron(model, hf_to_megatron({k: v.to(dtype) for k, v in state.items()}, shape,
                                                             te_names=impl == "transformer_engine"))
                    logits[impl] = model(tokens, positions, None)
                    del model
            for impl, value in logits.items():
                figures = compare_logits(value, reference)
                ok = figures["rel_to_max_logit"] <= (FP32_REL if dtype == torch.float32 else BF16_REL)
                ok &= dtype == torch.float32 or figures["top1_agree"] >= BF16_TOP1
                out[f"{name}/{label}/{impl}_vs_transformers"] = {**figures, "ok": ok}
                passed &= ok
            out[f"{name}/{label}/te_vs_local"] = compare_logits(logits["transformer_engine"], logits["local"])
            torch.cuda.empty_cache()
        hf = hf.float()
        # negative control: another seed's weights must be far off, or the comparison could not fail
        other = random_hf_model(shape, seed=1).cuda()
        with torch.no_grad():
            control = compare_logits(other(tokens).logits, hf(tokens).logits)
        out[f"{name}/negative_control_other_weights"] = control
        passed &= control["rel_to_max_logit"] > 1e-2
        del hf, other
        torch.cuda.empty_cache()
    out["yarn_packed"] = _yarn_packed_case()
    out["passed"] = passed and out["yarn_packed"]["ok"]
    return out


def _yarn_packed_case() -> dict:
    """YaRN x4 on a packed (THD) row of two documents, TE spec, bf16: logits equal transformers' run on each
    document alone. megatron-core 0.16.1's fused THD RoPE drops YaRN's mscale (1.139 at factor 4, so attention
    logits x1.30), which is why model.config turns RoPE fusion off under YaRN; the control forces it back on and
    must miss the reference by more than the tolerance, or the comparison could not see the defect."""
    import torch

    from hf_interop.names import hf_to_megatron, load_into_megatron
    from model.build import build_gpt_model
    from model.config import transformer_config
    from model.families import get_shape
    from model.shapes import YarnScaling
    from tests.hf_reference import random_hf_model
    from train.objectives.lm import pack_micro_batch

    shape, yarn, lengths = get_shape("0.5b", num_layers=2, vocab_size=1024), YarnScaling(factor=4.0), (48, 80)
    hf = random_hf_model(shape, seed=0, yarn=yarn)
    with torch.no_grad():  # sharp attention: with the 0.02-std init scores are ~0 and no temperature shows
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    hf = hf.cuda().to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    documents = [torch.randint(0, shape.vocab_size, (1, n), generator=generator).cuda() for n in lengths]
    batch = {"tokens": torch.cat(documents, 1),
             "position_ids": torch.cat([torch.arange(n) for n in lengths])[None].cuda()}
    packed, params = pack_micro_batch(batch)
    with torch.no_grad():
        reference = torch.cat([hf(document).logits for document in documents], 1)
    state = hf_to_megatron(hf.state_dict(), shape, te_names=True)
    out = {}
    for label, fused in (("te_packed", None), ("control_fused_rope", True)):
        config = transformer_config(shape, use_te=True, yarn=yarn, params_dtype=torch.bfloat16,
                                    perform_initialization=False)
        if fused is not None:
            config.apply_rope_fusion = fused  # the old setting: apply_rope_fusion=use_te
        model = build_gpt_model(shape, config, transformer_impl="transformer_engine", max_sequence_length=256,
                                yarn=yarn).cuda().eval()
        load_into_megatron(model, state)
        with torch.no_grad():
            logits = model(packed["tokens"], packed["position_ids"], None, packed_seq_params=params)
        out[label] = compare_logits(logits, reference)
        del model
    close = out["te_packed"]["rel_to_max_logit"] <= BF16_REL and out["te_packed"]["top1_agree"] >= BF16_TOP1
    control_caught = out["control_fused_rope"]["rel_to_max_logit"] > BF16_REL
    out.update(apply_rope_fusion=transformer_config(shape, use_te=True, yarn=yarn).apply_rope_fusion,
               control_caught=control_caught, ok=close and control_caught)
    return out


def check_hf_te() -> dict:
    """HF files -> launch/convert.py import (local spec, CPU) -> TE model on the GPU -> logits, export names."""
    import torch

    from hf_interop.names import megatron_to_hf
    from model.families import get_shape
    from tests.hf_reference import random_hf_model, random_tokens
    from train.checkpoint import load_weights

    torch.backends.cuda.matmul.allow_tf32 = False
    shape = get_shape("0.5b", num_layers=2)
    work = Path(tempfile.mkdtemp(prefix="hf-te-"))
    hf = random_hf_model(shape, seed=3)
    hf.save_pretrained(work / "hf")
    done = subprocess.run([sys.executable, str(REPO / "launch" / "convert.py"), "import", "--hf", str(work / "hf"),
                           "--out", str(work / "mcore"), "+recipe=0.5b", "model.num_layers=2"],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        return {"passed": False, "error": "import failed", "log": done.stderr[-3000:]}
    init_world()
    model = build_on_gpu(shape, "transformer_engine", torch.float32)
    load_weights([SimpleNamespace(module=model)], work / "mcore")
    tokens, positions = random_tokens(shape, 2, 128, device="cuda")
    with torch.no_grad():
        figures = compare_logits(model(tokens, positions, None), hf.cuda()(tokens).logits)
    exported = megatron_to_hf({k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")},
                              shape, te_names=True)
    source = hf.state_dict()
    mismatched = [k for k, v in exported.items() if not torch.equal(v.cpu(), source[k].cpu())]
    return {"passed": figures["rel_to_max_logit"] <= FP32_REL and not mismatched, "logits_vs_transformers": figures,
            "export_tensors": len(exported), "export_mismatched": mismatched[:5]}


# ---------------------------------------------------------------------------------------------- training
def _train(overrides: list[str], batches, steps: int) -> list[float]:
    import torch

    from train.trainer import Trainer

    trainer = Trainer(compose_recipe(*overrides))
    losses = []
    for step in range(steps):
        result = trainer.train_step(step + 1, [iter([batches[step]]) for _ in trainer.model])
        losses.append(result.loss)
    del trainer
    torch.cuda.empty_cache()
    return losses


def check_train_fp8() -> dict:
    from recipes.gpus import FP8_RECIPE_MIN_CAPABILITY, FP8_RECIPE_MIN_TE
    from recipes.validate import installed_transformer_engine

    seq, micro = 2048, 4
    base = ["+recipe=0.5b", "model.num_layers=4", "model.transformer_impl=transformer_engine", "precision.dtype=bf16",
            f"train.seq_length={seq}", f"train.micro_batch_size={micro}", f"train.global_batch_size={micro}",
            f"train.train_iters={STEPS}", "optimizer.lr=1e-3", "optimizer.warmup_iters=5",
            "parallel.overlap_grad_reduce=false", "parallel.overlap_param_gather=false"]
    batches = synthetic_batches(151936, seq, micro, STEPS, seed=0)
    runs = {"bf16": _train(base, batches, STEPS)}
    card, te = gpu_card(), installed_transformer_engine() or (0, 0)
    out = {"te_version": te, "card": card.name}
    for recipe in ("delayed", "tensorwise", "blockwise"):
        if card.compute_capability < FP8_RECIPE_MIN_CAPABILITY[recipe] or te < FP8_RECIPE_MIN_TE.get(recipe, (0, 0)):
            out[f"fp8-{recipe}"] = "not supported here (card or TE version)"
            continue
        try:
            runs[f"fp8-{recipe}"] = _train(base + ["precision.fp8=hybrid", f"precision.fp8_recipe={recipe}"],
                                          batches, STEPS)
        except Exception as error:  # a supported recipe that crashes is a failure, with its message
            runs[f"fp8-{recipe}"] = [float("nan")]
            out[f"fp8-{recipe}-error"] = f"{type(error).__name__}: {error}"[:500]
    reference = sum(runs["bf16"][-LAST:]) / LAST
    passed = all(math.isfinite(x) for x in runs["bf16"]) and runs["bf16"][-1] < runs["bf16"][0]
    for name, losses in runs.items():
        finite = all(math.isfinite(x) for x in losses)
        mean = sum(losses[-LAST:]) / len(losses[-LAST:])
        rel = abs(mean - reference) / reference
        out[name] = {"first": losses[0], "last": losses[-1], f"mean_last_{LAST}": mean,
                     "rel_to_bf16": rel, "finite": finite, "losses": [round(x, 4) for x in losses]}
        passed &= finite and rel <= FP8_LOSS_REL
    out["passed"] = passed and "fp8-delayed" in runs
    return out


# ---------------------------------------------------------------------------------------------- throughput
def _time_steps(step, warmup: int = 2, timed: int = 4) -> float:
    import torch

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(timed):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / timed


def _megatron_case(size: str, seq: int, fp8: bool) -> dict:
    import torch

    from model.accounting import achieved_tflops
    from recipes.planner import stage_memory
    from recipes.world import layout_of
    from train.trainer import Trainer

    overrides = [f"+recipe={size}", "model.transformer_impl=transformer_engine", "precision.dtype=bf16",
                 f"train.seq_length={seq}", "train.micro_batch_size=1", "train.global_batch_size=1",
                 "parallel.tp=1", "parallel.sp=false", "parallel.pp=1", "parallel.cp=1", "train.recompute=none",
                 "parallel.overlap_grad_reduce=false", "parallel.overlap_param_gather=false", "run.nodes=1",
                 "run.gpus_per_node=1", f"run.gpu={gpu_card().name}"]
    if fp8:
        overrides += ["precision.fp8=hybrid", "precision.fp8_recipe=delayed"]
    recipe = compose_recipe(*overrides)
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(recipe)
    batch = synthetic_batches(trainer.shape.vocab_size, seq, 1, 1, seed=1)[0]
    counter = iter(range(1, 10**6))
    seconds = _time_steps(lambda: trainer.train_step(next(counter), [iter([batch]) for _ in trainer.model]))
    peak = torch.cuda.max_memory_allocated()
    planned = stage_memory(recipe, trainer.shape, layout_of(recipe, 1))[0]
    tokens_per_s = seq / seconds
    tflops = achieved_tflops(tokens_per_s, trainer.shape, seq)
    trainer = None  # frees the GPU memory before the next case
    torch.cuda.empty_cache()
    gib = 1024 ** 3
    return {"tokens_per_s": round(tokens_per_s), "tflops": round(tflops, 1), "mfu": round(tflops / gpu_card().peak_bf16_tflops, 4),
            "peak_alloc_gib": round(peak / gib, 2), "planner_gib": round(planned.total / gib, 2),
            "planner_gib_without_allowance": round((planned.total - planned.allowance) / gib, 2),
            "measured_over_planned": round(peak / max(planned.total - planned.allowance, 1), 3)}


def _transformers_case(size: str, seq: int) -> dict:
    import torch
    from transformers import Qwen2ForCausalLM

    from hf_interop.names import hf_config_for
    from model.accounting import achieved_tflops
    from model.families import get_shape

    shape = get_shape(size)
    config = hf_config_for(shape)
    config._attn_implementation = "sdpa"
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    batch = synthetic_batches(shape.vocab_size, seq, 1, 1, seed=1)[0]
    tokens, labels = batch["tokens"].cuda(), batch["labels"].cuda()

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(tokens).logits
        torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1)).backward()
        optimizer.step()

    seconds = _time_steps(step)
    peak = torch.cuda.max_memory_allocated()
    model = optimizer = None  # frees the GPU memory before the next case
    torch.cuda.empty_cache()
    tokens_per_s = seq / seconds
    tflops = achieved_tflops(tokens_per_s, shape, seq)
    return {"tokens_per_s": round(tokens_per_s), "tflops": round(tflops, 1),
            "mfu": round(tflops / gpu_card().peak_bf16_tflops, 4), "peak_alloc_gib": round(peak / 1024 ** 3, 2)}


def check_throughput() -> dict:
    init_world()
    seq, out = 8192, {"seq_length": 8192, "micro_batch": 1, "peak_tflops_bf16": gpu_card().peak_bf16_tflops}
    for size in ("0.5b", "1.5b", "3b"):
        case = {}
        for label, run in (("transformers_sdpa_bf16", lambda: _transformers_case(size, seq)),
                           ("megatron_te_bf16", lambda: _megatron_case(size, seq, fp8=False)),
                           ("megatron_te_fp8", lambda: _megatron_case(size, seq, fp8=True))):
            try:
                case[label] = run()
            except Exception as error:
                case[label] = {"error": f"{type(error).__name__}: {error}"[:400]}
        hf = case["transformers_sdpa_bf16"].get("tokens_per_s")
        for label in ("megatron_te_bf16", "megatron_te_fp8"):
            if hf and "tokens_per_s" in case[label]:
                case[label]["ratio_vs_transformers"] = round(case[label]["tokens_per_s"] / hf, 2)
        out[size] = case
        Path(os.environ["CHECK_OUT"]).write_text(json.dumps(out, default=str))  # kept if the budget runs out
    out["passed"] = all("error" not in v for case in out.values() if isinstance(case, dict) for v in case.values()
                        if isinstance(v, dict))
    return out


# ---------------------------------------------------------------------------------------------- overlap, DALI
def check_overlap() -> dict:
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        return {"passed": True, "measured": False,
                "why": f"{gpus} GPU: data parallelism of 1 has no gradient reduce or parameter gather to overlap"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                           str(Path(__file__)), "overlap-worker", os.environ.get("OVERLAP_OUT", "/tmp/overlap.json")],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        return {"passed": False, "error": "overlap worker failed", "log": done.stderr[-3000:]}
    return {"passed": True, "measured": True, **json.loads(Path(os.environ.get("OVERLAP_OUT", "/tmp/overlap.json")).read_text())}


def overlap_worker(out: Path) -> None:
    """DP = all GPUs, 0.5B x 8 layers at 4K: step time with both overlaps off and on (rank 0 writes)."""
    import torch

    from train.trainer import Trainer

    world, result = int(os.environ["WORLD_SIZE"]), {}
    for on in (False, True):
        recipe = compose_recipe("+recipe=0.5b", "model.num_layers=8", "model.transformer_impl=transformer_engine",
                         "train.seq_length=4096", "train.micro_batch_size=1", f"train.global_batch_size={world}",
                         f"parallel.overlap_grad_reduce={on}", f"parallel.overlap_param_gather={on}")
        trainer = Trainer(recipe)
        batch = synthetic_batches(trainer.shape.vocab_size, 4096, 1, 1, seed=torch.distributed.get_rank())[0]
        counter = iter(range(1, 10**6))
        result[f"overlap_{'on' if on else 'off'}_step_s"] = _time_steps(
            lambda: trainer.train_step(next(counter), [iter([batch]) for _ in trainer.model]), 3, 10)
        trainer = None
    result["speedup"] = result["overlap_off_step_s"] / result["overlap_on_step_s"]
    if torch.distributed.get_rank() == 0:
        out.write_text(json.dumps(result))


class Samples:
    """16 samples of 64 tokens, distinct per index; module level so DALI's spawned workers can unpickle it."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        import numpy as np

        tokens = (np.arange(65) * (index + 1)) % 1000
        return {"tokens": tokens[:-1].astype(np.int64), "labels": tokens[1:].astype(np.int64),
                "loss_mask": np.ones(64, np.float32), "position_ids": np.arange(64, dtype=np.int64)}


def check_dali() -> dict:
    import torch

    from data.config import DataConfig
    from data.loader import build_loader

    def batches(loader: str):
        config = dataclasses.replace(DataConfig(), loader=loader, num_workers=1)
        return list(build_loader(Samples(), micro_batch_size=2, global_batch_size=4, dp_rank=0, dp_size=1,
                                 config=config, device_id=0 if loader == "dali" else None))

    started = time.perf_counter()
    dali, plain = batches("dali"), batches("torch")
    same = len(dali) == len(plain) and all(torch.equal(a[k].cpu(), b[k].cpu()) for a, b in zip(dali, plain) for k in b)
    on_gpu = all(v.is_cuda for batch in dali for v in batch.values())
    return {"passed": same and on_gpu, "micro_batches": len(dali), "equal_to_torch_loader": same,
            "on_gpu": on_gpu, "seconds": round(time.perf_counter() - started, 2)}


CHECKS = {"install": check_install, "settings": check_settings, "te-numerics": check_te_numerics,
          "hf-te": check_hf_te, "train-fp8": check_train_fp8, "throughput": check_throughput,
          "overlap": check_overlap, "dali": check_dali}


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    os.environ["CHECK_OUT"] = str(out)
    if name == "overlap-worker":
        from train.distributed import init_process_group

        init_process_group()
        overlap_worker(out)
        return
    result = CHECKS[name]()
    out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, default=str)[:2000])


if __name__ == "__main__":
    main()
