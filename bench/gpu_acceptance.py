"""GPU acceptance in one command: Transformer Engine numerics, FP8 training, throughput/MFU against transformers,
memory against the planner, the DALI loader. One GPU, an 8-minute window, installs included.

    python bench/gpu_acceptance.py --plan        # the checks and their time budgets; exits 0 on any machine
    python bench/gpu_acceptance.py               # run them all; writes bench/results/gpu-<card>-<date>.md
    python bench/gpu_acceptance.py --only te-numerics,train-fp8 --no-install

Exit codes: 0 all checks passed; 1 a numerics check failed (TE parity, HF names, FP8 loss, settings); 2 the
environment could not be prepared (install failed, a check crashed or ran out of its budget); 3 no CUDA device
(one line, within a second: nvidia-smi lists no GPU).

Environment, first found:
1. NGC PyTorch container (recommended): nvcr.io/nvidia/pytorch:25.09-py3 or newer brings CUDA torch, Transformer
   Engine and apex (apex's fused_weight_gradient_mlp_cuda turns megatron's gradient-accumulation fusion on).
   Inside it: `pip install -r requirements-common.txt -r requirements-gpu.txt && pip install -e .` (never
   reinstall torch there); the script then installs nothing.
2. A bare machine with PyPI: the `install` check runs pip for what does not import (CUDA torch 2.13.0, the
   project's requirements, transformer-engine[pytorch], nvidia-dali-cuda130) and reports the measured seconds.
   Without apex the gradient-accumulation fusion stays off (model.config), which the report states.
Each check runs in its own Python process (bench/gpu_checks.py) under its budget as a timeout, so one crash or
hang costs only its slot, and every figure measured so far is still written.
This driver imports only the standard library: `--plan` and the no-GPU exit need neither torch nor the project.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS_SCRIPT = REPO / "bench" / "gpu_checks.py"
RESULTS = REPO / "bench" / "results"
TOTAL_BUDGET_S = 480

# (name, budget in seconds, numerics check: a failure makes the exit code 1, what it does)
CHECKS = [
    ("install", 150, False, "pip-install what does not import (CUDA torch, requirements, TE, DALI); timed"),
    ("settings", 15, True, "launcher sets CUDA_DEVICE_MAX_CONNECTIONS before CUDA; batch reaches the GPU; "
                           "grad-accumulation fusion only with apex; cp_comm_type p2p"),
    ("te-numerics", 45, True, "logits, shrunk 7B untied + 0.5B tied (2 layers): TE spec vs transformers vs "
                              "local spec, same weights; fp32 TF32 off <= 1e-5 of max logit, bf16 <= 4e-2"),
    ("hf-te", 20, True, "HF import (local-spec checkpoint) loads into a TE-spec model (absent _extra_state "
                        "only); logits equal transformers'; export from TE names round-trips"),
    ("train-fp8", 80, True, "30 steps, 0.5B width x 4 layers, seq 2048: bf16 vs FP8 hybrid delayed, "
                            "tensorwise, blockwise (where TE and the card support them); FP8 mean loss of the "
                            "last 10 steps within 2 % of bf16's, no NaN"),
    ("throughput", 140, False, "0.5B/1.5B/3B full depth at 8K, micro 1: tokens/s, TFLOP/s, MFU (bf16, FP8) "
                               "vs transformers Qwen2ForCausalLM (SDPA, bf16, same batch/seq) -> ratio; peak "
                               "memory vs recipes.planner"),
    ("overlap", 10, False, "overlap_grad_reduce/overlap_param_gather on vs off: needs >= 2 GPUs (DP), "
                           "reported as not measurable on one"),
    ("dali", 20, False, "data.loader=dali delivers the torch loader's micro-batches, on the GPU"),
]
NUMERICS = {name for name, _, numerics, _ in CHECKS if numerics}


def plan_text() -> str:
    lines = [f"{'check':<12} {'budget':>7}  what"]
    lines += [f"{name:<12} {budget:>6}s  {what}" for name, budget, _, what in CHECKS]
    total = sum(budget for _, budget, _, _ in CHECKS)
    lines.append(f"{'total':<12} {total:>6}s  (limit {TOTAL_BUDGET_S} s = 8 minutes, installs included)")
    return "\n".join(lines)


def gpu_names() -> list[str]:
    """GPUs the driver lists (nvidia-smi: no CUDA import, answers in well under a second)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def run_check(name: str, budget: int, scratch: Path) -> dict:
    """One check in a child interpreter; its JSON result, or a crash/timeout record."""
    out = scratch / f"{name}.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", PYTHONPATH=str(REPO))
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(CHECKS_SCRIPT), name, str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=budget)
        log = done.stdout[-3000:] + done.stderr[-6000:]
        code = done.returncode
    except subprocess.TimeoutExpired as error:
        log, code = f"timed out after its {budget} s budget\n{(error.stderr or b'')[-3000:]!r}", None
    seconds = time.perf_counter() - started
    if code == 0 and out.exists():
        result = json.loads(out.read_text())
    else:  # figures a check saved before it crashed or ran out of time are kept
        partial = json.loads(out.read_text()) if out.exists() else {}
        result = {**partial, "passed": False, "error": f"exit {code}" if code is not None else "timeout", "log": log}
    result["seconds"] = round(seconds, 1)
    result["budget_s"] = budget
    return result


def versions() -> dict:
    probe = ("import json, importlib.metadata as m\nout = {}\nfor n in ('torch', 'transformer_engine', "
             "'megatron-core', 'transformers', 'nvidia-dali-cuda130', 'nvidia-dali-cuda120'):\n"
             "    try: out[n] = m.version(n)\n    except Exception: pass\n"
             "try:\n    import torch; out['cuda'] = torch.version.cuda\nexcept Exception: pass\nprint(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}


def write_report(results: dict, gpus: list[str], command: str, started: str) -> Path:
    card = gpus[0].split(",")[0].strip() if gpus else "unknown"
    slug = "".join(ch if ch.isalnum() else "-" for ch in card.lower()).strip("-")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu-{slug}-{started[:10]}.md"
    lines = [f"# GPU acceptance: {card}", "", f"- date (UTC): {started}", f"- command: `{command}`",
             f"- GPUs (name, driver): {'; '.join(gpus)}", f"- host: {platform.node()} {platform.machine()}",
             f"- versions: {json.dumps(versions())}", ""]
    lines += ["| check | result | seconds (budget) |", "|---|---|---|"]
    for name, result in results.items():
        verdict = "pass" if result.get("passed") else f"FAIL ({result.get('error', 'see figures')})"
        lines.append(f"| {name} | {verdict} | {result['seconds']} ({result['budget_s']}) |")
    for name, result in results.items():
        figures = {k: v for k, v in result.items() if k not in ("passed", "seconds", "budget_s", "log")}
        lines += ["", f"## {name}", "", "```json", json.dumps(figures, indent=1, default=str), "```"]
        if "log" in result:
            lines += ["", "<details><summary>log tail</summary>", "", "```", result["log"], "```", "</details>"]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", action="store_true", help="print the checks and their budgets, then exit 0")
    parser.add_argument("--only", default="", help="comma-separated check names (default: all)")
    parser.add_argument("--no-install", action="store_true", help="skip the install check (NGC container)")
    args = parser.parse_args(argv)
    if args.plan:
        print(plan_text())
        return 0
    gpus = gpu_names()
    if not gpus:
        print("gpu_acceptance: no CUDA device (nvidia-smi lists no GPU); run it on a GPU node, or --plan here")
        return 3
    selected = [c for c in CHECKS if not args.only or c[0] in args.only.split(",")]
    if args.no_install:
        selected = [c for c in selected if c[0] != "install"]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-acceptance-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, budget, _, _ in selected:
        if name == "install" and importlib.util.find_spec("transformer_engine") is not None:
            results[name] = {"passed": True, "skipped": "transformer_engine already imports (container)",
                             "seconds": 0.0, "budget_s": budget}
            continue
        print(f"[gpu_acceptance] {name} (budget {budget} s) ...", flush=True)
        results[name] = run_check(name, budget, scratch)
        print(f"[gpu_acceptance] {name}: {'pass' if results[name].get('passed') else 'FAIL'} "
              f"in {results[name]['seconds']} s", flush=True)
        if name == "install" and not results[name].get("passed"):
            break  # nothing else can run
    report = write_report(results, gpus, " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), started)
    print(f"[gpu_acceptance] report: {report}")
    if any(not r.get("passed") for n, r in results.items() if n in NUMERICS):
        return 1
    return 0 if all(r.get("passed") for r in results.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
