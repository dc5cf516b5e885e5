"""The W&B workspace (deploy/wandb_dashboard.py, launch/wandb_dashboard.py): built and printed offline, and its
panels cover exactly the keys the run writes (train.metrics' real records, per-source validation losses,
evaluation.run_log's scores of every registered task, DPO's rewards), with no panel waiting for a key nothing writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deploy import wandb_dashboard

REPO = Path(__file__).resolve().parents[1]


def test_print_builds_the_spec_without_network():
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    dead = "http://127.0.0.1:9"  # nothing listens: any network call would fail
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, WANDB_BASE_URL=dead, WANDB_MODE="offline")
    out = subprocess.run([sys.executable, "launch/wandb_dashboard.py", "--entity", "E", "--project", "P", "--print"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("workspace 'Qwen2.5-Coder training' in E/P, runs grouped by Group")
    for title in ("loss", "validation loss per source", "learning rate", "grad norm", "tokens/s", "TFLOP/s per GPU",
                  "MFU", "peak memory per rank (GiB)", "evaluation pass@1", "evaluation exact match"):
        assert f"\n  {title}: " in text, title
    spec = json.loads(text[text.index("\n{") + 1:])
    assert (spec["entity"], spec["project"]) == ("E", "P")
    sections = spec["spec"]["section"]["panel_bank_config"]["sections"]
    assert [s["name"] for s in sections] == list(wandb_dashboard.sections())
    dumped = json.dumps(sections)
    for key in ("tokens_per_s", "tflops_per_gpu", "mfu", "memory_gib", "grad_norm", "^val_loss/.*",
                "^eval/[^/]+/pass@1$"):
        assert key in dumped, key


def test_panels_cover_what_the_run_writes(tmp_path, gloo):
    from evaluation.run_log import run_values
    from evaluation.tasks import get, names
    from recipes.compose import compose_config, to_recipe
    from recipes.stages import DPO_METRICS
    from train.metrics import MetricsLogger

    recipe = to_recipe(compose_config(["+recipe=tiny", "logging.wandb=false", "logging.progress_bar=false"]))
    logger = MetricsLogger(recipe, recipe.model_shape(), tmp_path, 1, {})
    logger.log_train(step=1, loss=11.9, lr=1e-4, grad_norm=2.0, step_seconds=0.5, tokens_in_batch=2048,
                     consumed_tokens=2048)
    logger.log_validation(1, {"val_loss": 11.8, "val_loss/code": 11.7, "val_loss/math": 11.9})
    logger.close()
    written = set()
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        written |= {k for k, v in json.loads(line).items() if v is not None}
    written -= {"step", "time", "consumed_tokens"}  # the x axis and bookkeeping, not panels
    # every registered task's summary metrics, as evaluation.run_log names them (hm_fim's per language too)
    evaluated = run_values([{"task": name, **{m: 0.5 for m in get(name).metrics}} for name in names()])
    assert {"eval/humaneval/pass@1", "eval/fim_singleline/exact_match", "eval/hm_fim/exact_match/java"} <= \
        set(evaluated)
    written |= set(evaluated) | set(DPO_METRICS) | {f"val_{m}" for m in DPO_METRICS}
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "memory_gib", "val_loss/code"} <= written
    assert [key for key in sorted(written) if not wandb_dashboard.shown(key)] == []
    fixed = {k for panels in wandb_dashboard.sections().values() for p in panels for k in p.keys}
    assert fixed - written <= {"mfu"}  # mfu is None on CPU (no peak FLOP/s): written on GPUs only
    assert not wandb_dashboard.shown("loss_scale") and not wandb_dashboard.shown("valid_loss")  # negative controls
    assert not wandb_dashboard.shown("eval/humaneval/problems")
    assert not wandb_dashboard.shown("eval/hm_fim/exact_match/java/extra")
