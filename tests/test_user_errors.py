"""Mistakes a user makes end launch/pretrain.py with one clear message: printed once (rank 0), exit status
non-zero, no Python traceback, no torchrun failure report (train/errors.py), and found before the model is
built. HYDRA_FULL_ERROR=1 still shows the traceback. Also: what `checkpoint.load` accepts (train.checkpoint
.resolve_checkpoint), the same directories `launch/convert.py export --mcore` accepts."""
from __future__ import annotations

import json
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


def test_sft_strict_bad_line_on_two_ranks_is_one_message(tmp_path):
    chat = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "Sort a list?"}, {"role": "assistant", "content": "sorted(x)"}]}
    chat.write_text("".join(json.dumps(good) + "\n" for _ in range(20)) + '{"messages": [unterminated\n')
    done, out = pretrain(["+recipe=tiny", "stage=sft", "data.strict=true", "train.seq_length=64",
                          "train.micro_batch_size=2", "train.global_batch_size=4", "data.num_workers=0",
                          f"data.sources=[{{name: chat, prefix: {chat}, weight: 1.0}}]"], tmp_path, torchrun=True)
    assert done.returncode != 0
    assert out.count("error: data.strict=true: 1 malformed input record(s)") == 1, out  # rank 0 only
    assert f"{chat}:21" in out and "Fix or remove these records" in out
    assert "Traceback" not in out and "ChildFailedError" not in out, out
    errors = out[out.index("error: "):].splitlines()
    assert len(errors) <= 5, out  # the message: what, the reason with its example line, the fix


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



def _convert(*args):
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([sys.executable, "launch/convert.py", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_convert_out_that_is_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "hf.txt"
    a_file.write_text("not a directory")
    code, out = _convert("export", "--mcore", str(tmp_path), "--out", str(a_file))
    assert (code, out) == (2, f"error: --out {a_file} is a file; give the path of a new directory")
    code, out = _convert("import", "--hf", str(tmp_path), "--out", str(a_file), "--debug")
    assert code != 0 and "Traceback (most recent call last)" in out and "ConversionError: --out" in out


def _training_checkpoint(directory: Path, tokenizer: dict) -> Path:
    """What a training save records besides tensors (train.checkpoint): the recipe and the tokenizer."""
    from megatron.core import dist_checkpointing

    directory.mkdir(parents=True)
    dist_checkpointing.save({"recipe": {"model": {"shape": "tiny"}, "stage": {"name": "file"}},
                             "tokenizer": tokenizer}, str(directory))
    return directory


def test_export_refuses_a_tokenizer_the_checkpoint_was_not_trained_with(tmp_path, gloo, capsys):
    from data.tokenizer import tokenizer_identity
    from launch.convert import main
    from train.checkpoint import recorded_tokenizer

    foreign = {"name": "o200k", "vocab_size": 200_000, "fingerprint": "f" * 64}
    checkpoint = _training_checkpoint(tmp_path / "foreign", foreign)
    assert recorded_tokenizer(checkpoint) == foreign
    assert main(["export", "--mcore", str(checkpoint), "--out", str(tmp_path / "out"), "--tokenizer", "qwen2.5"]) == 2
    out = capsys.readouterr().err.strip()
    assert out.startswith(f"error: {checkpoint} was trained with tokenizer 'o200k' (vocab 200000, fingerprint "
                          "ffffffffffff), not 'qwen2.5' (vocab 151665") and "--tokenizer none" in out, out
    assert not (tmp_path / "out").exists()
    # negative control: the recorded Qwen2.5 tokenizer passes the check (and the export stops later, at the
    # tensors this stand-in checkpoint does not have)
    ours = _training_checkpoint(tmp_path / "ours", tokenizer_identity("qwen2.5"))
    assert main(["export", "--mcore", str(ours), "--out", str(tmp_path / "out"), "--tokenizer", "qwen2.5"]) == 2
    out = capsys.readouterr().err
    assert "was trained with tokenizer" not in out and "embedding.word_embeddings.weight" in out, out
