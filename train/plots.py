"""Loss and throughput plots from RUN_DIR/metrics.jsonl, for users without W&B.

Written at the end of a run and on demand (`python launch/plot.py RUN_DIR`). A resumed run re-logs the steps
between its last checkpoint and the crash; the plot keeps the last record of each step (the one that counts).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes have no display
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(training records by step, validation records by step), last record per step winning.

    A validation record holds val_loss (the blend) and val_loss/NAME for each data source, a training record
    its loss; other records of the same step (evaluation's eval/TASK/METRIC) are neither and are left out, so they
    do not replace that step's training record."""
    train, valid = {}, {}
    path = Path(run_dir) / "metrics.jsonl"
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number} is not JSON ({error}); delete the partial last line") from error
        if "val_loss" in record:
            valid[record["step"]] = record
        elif "loss" in record:
            train[record["step"]] = record
    return train, valid


def validation_curves(valid: dict[int, dict]) -> dict[str, tuple[list, list]]:
    """Plot label -> (steps, losses): the blend's validation loss and one curve per data source."""
    curves = {}
    for key in sorted({k for record in valid.values() for k in record if k.startswith("val_loss")}):
        points = sorted((step, record[key]) for step, record in valid.items() if key in record)
        label = "validation loss" + (f" ({key.split('/', 1)[1]})" if "/" in key else "")
        curves[label] = ([step for step, _ in points], [loss for _, loss in points])
    return curves


def render_plots(run_dir: Path) -> list[Path]:
    """Write loss.png and throughput.png into run_dir; returns their paths."""
    run_dir = Path(run_dir)
    train, valid = read_metrics(run_dir)
    steps = sorted(train)
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, [train[s]["loss"] for s in steps], label="train loss")
    for label, (valid_steps, values) in validation_curves(valid).items():
        axis.plot(valid_steps, values, ".--" if "(" in label else "o-", label=label)
    axis.set(xlabel="step", ylabel="loss (nats/token)", title=run_dir.name)
    axis.legend()
    figure.tight_layout()
    loss_png = run_dir / "loss.png"
    figure.savefig(loss_png, dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, [train[s]["tokens_per_s"] for s in steps], label="tokens/s (all ranks)")
    axis.set(xlabel="step", ylabel="tokens/s", title=f"{run_dir.name} throughput")
    if any(train[s].get("mfu") for s in steps):
        mfu_axis = axis.twinx()
        mfu_axis.plot(steps, [100 * (train[s].get("mfu") or 0) for s in steps], "r--", label="MFU %")
        mfu_axis.set_ylabel("MFU %")
    figure.tight_layout()
    throughput_png = run_dir / "throughput.png"
    figure.savefig(throughput_png, dpi=100)
    plt.close(figure)
    return [loss_png, throughput_png]
