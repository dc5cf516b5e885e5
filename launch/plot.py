"""Render loss.png and throughput.png from a run's metrics.jsonl: `python launch/plot.py RUN_DIR`."""
import sys
from pathlib import Path

from train.plots import render_plots

if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "metrics.jsonl").exists():
        sys.exit("usage: python launch/plot.py RUN_DIR   (RUN_DIR must contain metrics.jsonl)")
    for path in render_plots(Path(sys.argv[1])):
        print(path)
