"""Mistakes a user makes end launch/pretrain.py with one clear message: printed once (rank 0), exit status
non-zero, no Python traceback, no torchrun failure report (train/errors.py), and found before the model is
built. HYDRA_FULL_ERROR=1 still shows the traceback. Also: what `checkpoint.load` accepts (train.checkpoint
.resolve_checkpoint), the same directories `launch/convert.py export --mcore` accepts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.checkpoint import CheckpointError, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]


def pretrain(args, tmp_path, torchrun=False, **env):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"] if torchrun else [sys.executable]
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", **env)
    done = subprocess.run([*launcher, "launch/pretrain.py", *args, f"run.dir={tmp_path / 'run'}"], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=600)
    return done, (done.stdout + done.stderr).strip()


def test_bad_layout_on_two_ranks_is_one_message(tmp_path):
    done, out = pretrain(["+recipe=32b"], tmp_path, torchrun=True)  # 32B needs 16 ranks: TP8 x PP2
    assert done.returncode != 0
    assert out.count("error: recipe breaks 1 rule(s):") == 1, out  # rank 0 only
    assert "[world-size] world size 2 is not a multiple of tp x pp x cp = 8 x 2 x 1 = 16" in out
    assert "run on a multiple of 16 GPUs" in out  # the fix
    assert "Traceback" not in out and "ChildFailedError" not in out and "FAILED" not in out, out
    assert len(out.splitlines()) <= 3, out  # the message (2 lines), nothing else from 2 ranks and torchrun
    assert "not installed. Falling back" not in out  # megatron's TE/apex notices are gone


def test_missing_data_prefix_fails_before_the_model_build(tmp_path):
    missing = tmp_path / "nowhere" / "code"
    done, out = pretrain(["+recipe=tiny", "parallel.tp=1", f"data.sources=[{{name: code, prefix: {missing}, weight: 1.0}}]"],
                         tmp_path)
    assert done.returncode == 2
    assert out == (f"error: data source 'code': ['{missing}.bin', '{missing}.idx']; set data.sources[].prefix to "
                   "the output prefix of data/prepare.py (PREFIX.bin and PREFIX.idx must exist)"), out
    assert not (tmp_path / "run" / "logs").exists()  # stopped before the process group, logs and model

    full, out = pretrain(["+recipe=tiny", "parallel.tp=1", f"data.sources=[{{name: code, prefix: {missing}, weight: 1.0}}]"],
                         tmp_path, HYDRA_FULL_ERROR="1")
    assert full.returncode != 0 and "Traceback (most recent call last)" in out
    assert "data.datasets.DataValidationError: data source 'code'" in out


def test_malformed_checkpoint_path_says_what_was_looked_for(tmp_path):
    done, out = pretrain(["+recipe=tiny", "parallel.tp=1", f"checkpoint.load={tmp_path / 'ckpt' / 'typo'}"], tmp_path)
    assert done.returncode == 2 and "Traceback" not in out
    assert out.startswith(f"error: checkpoint {tmp_path / 'ckpt' / 'typo'} does not exist; a checkpoint is one of:")
    assert "metadata.json" in out and "checkpoints/latest (a run directory)" in out


def _checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    return directory


def test_checkpoint_load_accepts_what_the_exporter_accepts(tmp_path):
    from hf_interop.convert import resolve_checkpoint_dir  # launch/convert.py export --mcore

    run = tmp_path / "runs" / "tiny-file"
    _checkpoint(run / "checkpoints" / "step_00000002")
    step = _checkpoint(run / "checkpoints" / "step_00000004")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    imported = _checkpoint(tmp_path / "ckpt" / "7b-base")
    for given, meant in [(run, step), (run / "checkpoints", step), (step, step), (imported, imported)]:
        assert resolve_checkpoint(given) == meant
        assert resolve_checkpoint_dir(given) == meant  # the exporter agrees

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="found none of .*empty/metadata.json.*empty/latest.*"
                                              "empty/checkpoints/latest"):
        resolve_checkpoint(empty)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="Hugging Face config.json: convert it with `launch/convert.py import`"):
        resolve_checkpoint(hf)
    (run / "checkpoints" / "latest").write_text("step_00000009\n")  # a pointer to nothing
    with pytest.raises(CheckpointError, match="names .*step_00000009, which is not a complete checkpoint"):
        resolve_checkpoint(run)
