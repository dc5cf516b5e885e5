"""train.plots reads metrics.jsonl as a run writes it: training, validation and evaluation records (eval/TASK/
METRIC from train.eval_tasks or launch/evaluate.py) at the same steps; only training and validation are drawn."""
from __future__ import annotations

import json

from train.plots import read_metrics, render_plots


def test_evaluation_records_do_not_replace_the_steps_training_record(tmp_path):
    records = [
        {"step": 1, "loss": 11.9, "tokens_per_s": 100.0},
        {"step": 2, "loss": 11.5, "tokens_per_s": 110.0},
        {"step": 2, "val_loss": 11.7, "val_loss/code": 11.7},
        {"step": 2, "eval/humaneval/pass@1": 0.0, "eval/fim_singleline/exact_match": 0.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    train, valid = read_metrics(tmp_path)
    assert {step: r["loss"] for step, r in train.items()} == {1: 11.9, 2: 11.5}
    assert list(valid) == [2] and valid[2]["val_loss"] == 11.7
    assert [path.name for path in render_plots(tmp_path)] == ["loss.png", "throughput.png"]
