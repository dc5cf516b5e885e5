"""The main job for real: launch/pretrain.py on 2 CPU ranks (TP2) trains the tiny Qwen2.5-Coder shape on real
code and its loss falls; metrics land in metrics.jsonl, W&B (offline) and PNG plots with the same steps."""
from __future__ import annotations

import json

import pytest

from tests.run_helpers import FAST, prepare_code_dataset, run_pretrain, train_losses, wandb_history

STEPS = 30


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("train_run")
    prefix = prepare_code_dataset(work)
    run_dir = work / "run"
    completed = run_pretrain(2, ["+recipe=tiny", *FAST, f"train.train_iters={STEPS}", "train.eval_interval=10",
                                 "checkpoint.save_interval=0", f"run.dir={run_dir}",
                                 f"data.sources=[{{name: code, prefix: {prefix}, weight: 1.0}}]"])
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return run_dir, completed


def test_loss_falls_on_real_code(finished_run):
    run_dir, completed = finished_run
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = losses[1], sum(losses[s] for s in range(STEPS - 4, STEPS + 1)) / 5
    assert first > 11.0  # ~ln(151,680) at random init
    assert last < first - 1.5, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    assert "loss" in completed.stdout


def test_metrics_jsonl_wandb_and_plots_agree(finished_run):
    run_dir, _ = finished_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "step_time_s", "memory_gib",
                "consumed_tokens"):
        assert all(r.get(key) is not None for r in train), key
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    assert (run_dir / "loss.png").stat().st_size > 1000 and (run_dir / "throughput.png").stat().st_size > 1000

    history = wandb_history(run_dir)
    logged_keys = {key for items in history for key in items}
    logged_steps = {int(json.loads(items["_step"])) for items in history if "loss" in items}
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "memory_gib"} <= logged_keys
    assert logged_steps == {r["step"] for r in train}
