"""Where a run's numbers go: console (progress bar + `loss` lines), metrics.jsonl in the run dir, W&B.

Exactly one rank (global rank 0) writes; the loss it logs is already the global per-token mean (train.trainer).
W&B runs offline unless WANDB_MODE says otherwise (no key needed; `wandb sync RUN_DIR/wandb/offline-run-*`
uploads later); online needs WANDB_API_KEY in the environment, never in a recipe. Runs are grouped by
recipe and stage, and the config is logged as a plain dict. metrics.jsonl has one JSON object per logged
step with the same keys, so users without W&B (and the plots in train.plots) read the same numbers.

Throughput: MFU = model TFLOP/s per GPU / the GPU's dense bf16 peak (recipes.gpus; run.peak_tflops overrides).
Model FLOPs come from model.accounting (full attention square, megatron's convention; recompute not counted).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import torch

from model.accounting import training_flops_per_token
from model.shapes import ModelShape
from recipes.gpus import get_gpu
from recipes.schema import Recipe


def peak_memory_gib() -> float:
    """CUDA max allocated on GPU; peak resident set size of this process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def peak_tflops(recipe: Recipe) -> Optional[float]:
    """Dense bf16 peak of the GPU the run uses; None on CPU (MFU is meaningless there)."""
    if recipe.run.peak_tflops is not None:
        return recipe.run.peak_tflops
    if not torch.cuda.is_available():
        return None
    return get_gpu(recipe.run.gpu).peak_bf16_tflops


class MetricsLogger:
    """Console + JSONL + W&B sink for one run; a no-op on every rank but global rank 0."""

    def __init__(self, recipe: Recipe, shape: ModelShape, run_dir: Path, world_size: int, config_dict: dict):
        self.enabled = torch.distributed.get_rank() == 0
        self.recipe, self.world_size = recipe, world_size
        self.flops_per_token = training_flops_per_token(shape, recipe.train.seq_length)
        self.peak = peak_tflops(recipe)
        self.jsonl_path = run_dir / "metrics.jsonl"
        self.wandb_run = None
        self.progress = None
        if not self.enabled:
            return
        _drop_partial_last_line(self.jsonl_path)
        if recipe.logging.wandb:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb_run = wandb.init(
                project=recipe.logging.wandb_project,
                name=recipe.run.name,
                group=recipe.logging.wandb_group or f"{recipe.model.shape}-{recipe.stage.name}",
                job_type=recipe.stage.name,
                dir=str(run_dir),
                config=config_dict,
                resume="allow",
                id=_stable_run_id(run_dir),
            )

    def start_progress(self, first_step: int, total_steps: int) -> None:
        if self.enabled and self.recipe.logging.progress_bar:
            from tqdm import tqdm

            self.progress = tqdm(total=total_steps, initial=first_step, desc="train", unit="step",
                                 file=sys.stderr, dynamic_ncols=True)

    def log_train(self, step: int, loss: float, lr: float, grad_norm: Optional[float], step_seconds: float,
                  tokens_in_batch: int, consumed_tokens: int, extra: Optional[dict] = None) -> dict:
        """Log one training step's numbers (averaged over the steps since the last log by the caller).

        extra: the stage's numbers logged beside the loss under their own keys (StageSpec.metrics).
        """
        tokens_per_second = tokens_in_batch / max(step_seconds, 1e-9)
        tflops_per_gpu = tokens_per_second * self.flops_per_token / self.world_size / 1e12
        record = {
            "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "step_time_s": step_seconds,
            "tokens_per_s": tokens_per_second, "tflops_per_gpu": tflops_per_gpu,
            "mfu": tflops_per_gpu / self.peak if self.peak else None,
            "memory_gib": peak_memory_gib(), "consumed_tokens": consumed_tokens, **(extra or {}),
        }
        self._emit(record)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:,.0f}")
        return record

    def log_validation(self, step: int, losses: dict) -> None:
        """`losses`: {"val_loss": blend, "val_loss/NAME": each source's} (train.trainer.Trainer.evaluate)."""
        self._emit({"step": step, **losses})

    def advance(self, steps: int = 1) -> None:
        if self.progress is not None:
            self.progress.update(steps)

    def _emit(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        with self.jsonl_path.open("a") as sink:
            sink.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time") and v is not None},
                               step=record["step"])
        text = " | ".join(_format(k, v) for k, v in record.items() if k != "time" and v is not None)
        if self.progress is not None:
            self.progress.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _drop_partial_last_line(path: Path) -> None:
    """A kill -9 mid-write can leave half a JSON line; cut it so a resumed run appends whole records."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _stable_run_id(run_dir: Path) -> str:
    """One W&B run per run dir, so a resumed job continues the same W&B run."""
    id_file = run_dir / "wandb_run_id"
    if not id_file.exists():
        id_file.write_text(uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


def _format(key: str, value) -> str:
    if isinstance(value, float):
        if key in ("lr",):
            return f"{key} {value:.3e}"
        if key in ("consumed_tokens",):
            return f"{key} {value:,.0f}"
        return f"{key} {value:.4f}" if abs(value) < 1e4 else f"{key} {value:,.0f}"
    return f"{key} {value}"
