"""Nothing trains on stale, foreign or half-written data: data/prepare.py publishes its three files atomically
(kill -9 mid-write leaves the previous output byte for byte), training refuses a .bin/.idx/report that do not
belong together or a tokenizer other than the recipe's (a report-less source gets a max-id scan), megatron's
index cache follows the content of a re-prepared prefix (samples read back equal a fresh build's), and every
bad argument of prepare is one `error:` line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from data.config import DataConfig, DataSource
from data.datasets import DataValidationError, build_pretrain_datasets, summarize_source
from data.pipeline import PrepareOptions, prepare, read_back
from data.tokenizer import (
    QWEN_FINGERPRINT, VOCAB_SIZE, load_ranks, load_tokenizer, qwen_vocab_bytes, tokenizer_identity, vocab_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ENV.pop("HYDRA_FULL_ERROR", None)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(backend="tiktoken")


def files(root: Path, package: str, count: int) -> Path:
    """A directory of the first `count` .py files of a stdlib package (a corpus of known size)."""
    folder = root / f"{package}{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((STDLIB / package).glob("*.py"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def run(inputs, prefix, **kw):
    return prepare(PrepareOptions(inputs=list(inputs), output_prefix=prefix, progress=False, **kw))


def outputs(prefix: Path) -> dict:
    return {suffix: Path(f"{prefix}{suffix}").read_bytes() for suffix in (".bin", ".idx", ".report.json")}


def test_qwen_fingerprint_is_its_vocabulary_and_a_released_style_directory_agrees(tmp_path):
    from data.hf_export import export_hf_tokenizer

    assert vocab_fingerprint(qwen_vocab_bytes(load_ranks())) == QWEN_FINGERPRINT  # the pinned value
    directory = export_hf_tokenizer(tmp_path / "hf")
    assert tokenizer_identity(str(directory))["fingerprint"] == QWEN_FINGERPRINT  # same ids, same fingerprint
    vocab = json.loads((directory / "tokenizer.json").read_text())
    first, second = vocab["model"]["vocab"]["a"], vocab["model"]["vocab"]["b"]
    vocab["model"]["vocab"]["a"], vocab["model"]["vocab"]["b"] = second, first  # two ids swapped
    (directory / "tokenizer.json").write_text(json.dumps(vocab))
    assert tokenizer_identity(str(directory))["fingerprint"] != QWEN_FINGERPRINT  # negative control


def test_report_records_tokenizer_and_output(tmp_path, tok):
    prefix = tmp_path / "code"
    run([files(tmp_path, "json", 3)], prefix)
    report = json.loads(Path(f"{prefix}.report.json").read_text())
    assert report["tokenizer"] == {"name": "qwen2.5", "vocab_size": VOCAB_SIZE, "fingerprint": QWEN_FINGERPRINT}
    out = report["output"]
    assert out["bin_bytes"] == Path(f"{prefix}.bin").stat().st_size
    assert out["idx_bytes"] == Path(f"{prefix}.idx").stat().st_size
    import hashlib

    expected = hashlib.sha256()
    for document in read_back(prefix):  # independent: megatron's reader, not the pipeline's hash
        expected.update(np.int64(len(document)).tobytes() + document.astype(np.int64).tobytes())
    assert out["content_sha256"] == expected.hexdigest()
    assert not list(tmp_path.glob("*.partial"))
    assert summarize_source("code", str(prefix), "100,0,0", 151936, "qwen2.5").documents == report["documents"]


def test_kill_during_prepare_leaves_the_previous_output(tmp_path):
    prefix = tmp_path / "code"
    run([files(tmp_path, "json", 3)], prefix)
    before = outputs(prefix)
    process = subprocess.Popen(
        [sys.executable, "data/prepare.py", "--input", str(STDLIB), "--output-prefix", str(prefix),
         "--workers", "1", "--no-progress", "--max-line-length", "0"],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = Path(f"{prefix}.bin.partial")
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.is_file() and partial.stat().st_size > 1 << 20):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert partial.is_file(), "the rewrite was killed while writing"
    assert outputs(prefix) == before  # the previous .bin, .idx and report, byte for byte
    summarize_source("code", str(prefix), "100,0,0", 151936, "qwen2.5")  # and training accepts them
    run([files(tmp_path, "json", 2)], prefix)  # the next prepare replaces the leftovers
    assert not list(tmp_path.glob("*.partial")) and outputs(prefix) != before


def test_files_that_do_not_belong_together_are_refused(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    run([files(tmp_path, "json", 2)], small)
    run([files(tmp_path, "json", 4)], large)
    shutil.copy(f"{large}.bin", f"{small}.bin")  # a rewrite killed after its .bin (the old code's state)
    with pytest.raises(DataValidationError, match=rf"{small}.idx describes \d+ bytes of tokens but {small}.bin "
                                                  r"holds \d+.*re-run data/prepare.py"):
        summarize_source("code", str(small), "100,0,0", 151936, "qwen2.5")
    shutil.copy(f"{large}.idx", f"{small}.idx")  # .bin and .idx agree, the report is the old run's
    with pytest.raises(DataValidationError, match=rf"{small}.report.json does not belong to {small}.bin/.idx "
                                                  r"\(bin_bytes \d+ != \d+; idx_bytes"):
        summarize_source("code", str(small), "100,0,0", 151936, "qwen2.5")
    shutil.copy(f"{large}.report.json", f"{small}.report.json")  # negative control: all three from one run
    assert summarize_source("code", str(small), "100,0,0", 151936, "qwen2.5").fingerprint == \
        json.loads(Path(f"{large}.report.json").read_text())["output"]["content_sha256"]


def write_ids(prefix: Path, documents) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for document in documents:
        builder.add_document(np.asarray(document, dtype=np.int32), [len(document)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def test_foreign_tokenizer_is_refused(tmp_path, tok):
    rng = np.random.default_rng(0)
    documents = [np.append(rng.integers(0, 1000, 50), 151643) for _ in range(20)]
    ours = write_ids(tmp_path / "ours", documents)
    assert summarize_source("code", ours, "100,0,0", 151936, "qwen2.5").documents == 20  # no report: scanned
    documents[7][3] = 199_999  # another tokenizer's id (its vocabulary has 200,000)
    foreign = write_ids(tmp_path / "foreign", documents)
    with pytest.raises(DataValidationError, match=rf"'code' \({foreign}, no report\): largest token id 199999 >= "
                                                  r"vocabulary size 151665 of tokenizer 'qwen2.5'"):
        summarize_source("code", foreign, "100,0,0", 151936, "qwen2.5")

    prefix = tmp_path / "code"
    run([files(tmp_path, "json", 2)], prefix)
    report = json.loads(Path(f"{prefix}.report.json").read_text())
    report["tokenizer"] = {"name": "o200k", "vocab_size": 200_000, "fingerprint": "f" * 64}
    Path(f"{prefix}.report.json").write_text(json.dumps(report))
    with pytest.raises(DataValidationError, match=r"prepared with tokenizer 'o200k' \(vocab 200000, fingerprint "
                                                  r"ffffffffffff\) but data.tokenizer is 'qwen2.5' \(vocab 151665"):
        build_pretrain_datasets(DataConfig(sources=[DataSource("code", str(prefix))], split="100,0,0",
                                           fim_rate=0.0), 32, 10, 0, seed=1, tokenizer=tok)


def samples(prefix: Path, tok, cache_dir=None) -> list:
    """Every training sample of a one-source blend, as megatron serves it (its index cache next to the prefix)."""
    cfg = DataConfig(sources=[DataSource("code", str(prefix))], split="100,0,0", fim_rate=0.0, cache_dir=cache_dir)
    train, _ = build_pretrain_datasets(cfg, 64, 300, 0, seed=3, tokenizer=tok)
    return [np.asarray(train[i]["tokens"]) for i in range(300)]


def test_reprepared_prefix_trains_on_exactly_the_new_documents(tmp_path, tok):
    prefix, fresh = tmp_path / "data" / "code", tmp_path / "fresh"
    run([files(tmp_path, "json", 2)], prefix)
    old = samples(prefix, tok)
    assert list((prefix / "cache").rglob("*.npy")), "megatron cached its indices in PREFIX/cache/"
    for corpus in (files(tmp_path, "json", 5), files(tmp_path, "json", 1)):  # larger, then smaller
        run([corpus], prefix)
        shutil.rmtree(fresh, ignore_errors=True)
        run([corpus], fresh / "code")  # reference: the same corpus, never cached before
        new, reference = samples(prefix, tok), samples(fresh / "code", tok)
        assert all(np.array_equal(a, b) for a, b in zip(new, reference))
        assert not all(np.array_equal(a, b) for a, b in zip(new, old))  # negative control: the data changed
        vocabulary = set(np.concatenate(read_back(prefix)).tolist())
        assert all(set(sample.tolist()) <= vocabulary for sample in new)


def cli(*args):
    done = subprocess.run([sys.executable, "data/prepare.py", *args, "--no-progress"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr.strip()


def test_bad_arguments_are_one_error_line(tmp_path):
    source = files(tmp_path, "json", 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "code"
    cases = [
        (["--input", str(tmp_path / "missing"), "--output-prefix", str(out)],
         f"error: input path(s) do not exist: ['{tmp_path / 'missing'}']; fix --input"),
        (["--input", str(source), "--output-prefix", str(out), "--workers", "0"],
         "error: --workers must be >= 1"),
        # sysfs refuses new files even to root (a chmod'ed directory would not stop root)
        (["--input", str(source), "--output-prefix", "/sys/kernel/qwen-data/code"],
         "error: cannot write the output /sys/kernel/qwen-data/code.*: Operation not permitted"),
        (["--input", str(empty), "--output-prefix", str(out)],
         f"error: no documents in ['{empty}'] (0 documents, 0 tokens from 0 records; skipped: none); nothing was "
         "written"),
    ]
    for args, start in cases:
        code, err = cli(*args)
        assert code == 2 and err.startswith(start) and len(err.splitlines()) == 1, (args, err)
        assert not out.parent.exists() or not list(out.parent.iterdir()), "nothing written"
    code, err = cli("--input", str(empty), "--output-prefix", str(out), "--debug")
    assert code != 0 and "Traceback (most recent call last)" in err and "BadInputError: no documents" in err
