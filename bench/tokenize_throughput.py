"""Tokenize throughput, end to end: data/prepare.py vs Megatron's preprocess_data algorithm, same input, same run.

    python bench/tokenize_throughput.py                       # Python stdlib .py files, 2 workers
    python bench/tokenize_throughput.py --input DIR --workers 4

Baseline (the algorithm of Megatron-LM tools/preprocess_data.py, re-implemented here because
megatron.training is not importable): a multiprocessing Pool of N workers, `imap(encode, jsonl_lines, 32)`,
each worker json.loads the line and encodes the text with Hugging Face `tokenizers` one document at a time
(tokenizer.json derived from the same ranks, data/hf_export.py), appends <|endoftext|>; the main process
adds each document to megatron's IndexedDatasetBuilder. Megatron wraps the tokenizer in transformers'
AutoTokenizer, which is slower still, so this baseline is the faster variant of the algorithm.

Ours: `python data/prepare.py` on the same JSONL with flags that keep every line, same worker count.
Both outputs must be byte-identical (.bin and .idx): identical ids, document for document.
Timings are END TO END: each path runs as its own process, timed from launch to exit, so interpreter start,
imports (megatron.core and torch for the writer: ~3.4 s on 2 cores, which Megatron's tool pays too), pool and
tokenizer loading are all included; with --repeats N the two paths alternate N times and each keeps its best.
"""
import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from data.hf_export import export_hf_tokenizer
from data.tokenizer import EOD, SPECIAL_TOKENS, VOCAB_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

CODE_SUFFIXES = (".py", ".c", ".h", ".cpp", ".js", ".sh", ".rst", ".txt", ".html", ".css")


def build_corpus(root: Path, out: Path, suffixes=CODE_SUFFIXES) -> int:
    """JSONL {"text", "path"} of every UTF-8 text file under root (site-packages and __pycache__ skipped).

    Files with literal special-token strings are left out: Megatron's algorithm would encode them as
    special ids (HF matches added tokens in raw text) while we keep them text, so ids could not be equal.
    """
    count = 0
    with open(out, "w", encoding="utf-8") as handle:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
            for name in sorted(filenames):
                if not name.endswith(suffixes):
                    continue
                try:
                    text = (Path(dirpath) / name).read_bytes().decode("utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                if not text.strip() or "\x00" in text or any(s in text for s in SPECIAL_TOKENS):
                    continue
                handle.write(json.dumps({"text": text, "path": str(Path(dirpath, name).relative_to(root))}) + "\n")
                count += 1
    return count


# ------------------------------------------------------------------------------------- baseline workers
_HF = {}


def _baseline_init(tokenizer_json: str) -> None:
    from tokenizers import Tokenizer

    _HF["tok"] = Tokenizer.from_file(tokenizer_json)
    _HF["eod"] = _HF["tok"].token_to_id(EOD)


def _baseline_encode(line: str):
    text = json.loads(line)["text"]
    ids = _HF["tok"].encode(text, add_special_tokens=False).ids
    ids.append(_HF["eod"])
    return ids, [len(ids)], len(line)


def baseline_main(jsonl: Path, prefix: Path, tokenizer_json: Path, workers: int) -> None:
    """The baseline process: like Megatron's tool it imports megatron first, then encodes and writes."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(VOCAB_SIZE))
    with open(jsonl, encoding="utf-8") as lines:
        if workers == 1:
            _baseline_init(str(tokenizer_json))
            encoded = map(_baseline_encode, lines)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(workers, _baseline_init, (str(tokenizer_json),))
            encoded = pool.imap(_baseline_encode, lines, 32)
        for ids, lengths, _ in encoded:
            builder.add_document(np.asarray(ids), lengths)
        if pool is not None:
            pool.close()
            pool.join()
    builder.finalize(f"{prefix}.idx")


def timed(command) -> float:
    """Wall seconds of one process from launch to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *map(str, command)], cwd=REPO_ROOT, env=ENV, check=True)
    return time.perf_counter() - start


def run_baseline(jsonl: Path, prefix: Path, tokenizer_json: Path, workers: int) -> float:
    return timed(["bench/tokenize_throughput.py", "--megatron-baseline", jsonl, prefix, tokenizer_json,
                  "--workers", workers])


def run_ours(jsonl: Path, prefix: Path, workers: int, backend: str) -> float:
    elapsed = timed(["data/prepare.py", "--input", jsonl, "--output-prefix", prefix, "--mode", "text",
                     "--workers", workers, "--tokenizer-backend", backend, "--max-bytes", 0, "--max-line-length", 0,
                     "--no-dedupe", "--no-progress"])
    skipped = json.loads(Path(f"{prefix}.report.json").read_text())["records"]["skipped"]
    if skipped:
        raise AssertionError(f"our path skipped {skipped} records, outputs cannot be compared")
    return elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="directory of source files (default: this Python's standard library)")
    parser.add_argument("--workers", type=int, default=2, help="same worker count for both (default 2)")
    parser.add_argument("--backend", default="auto", choices=("auto", "tiktoken", "gigatoken"),
                        help="our tokenizer backend (auto: gigatoken if installed)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep corpus and outputs here")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate the two paths this many times and keep each one's best time "
                             "(steadier on a shared machine)")
    parser.add_argument("--megatron-baseline", nargs=3, type=Path, metavar=("JSONL", "PREFIX", "TOKENIZER_JSON"),
                        help=argparse.SUPPRESS)  # the baseline's own process (run_baseline)
    args = parser.parse_args(argv)
    if args.megatron_baseline:
        baseline_main(*args.megatron_baseline, args.workers)
        return

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tokbench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    docs = build_corpus(args.input, corpus)
    hf_dir = export_hf_tokenizer(work / "hf_tokenizer")
    print(f"corpus: {docs} documents, {corpus.stat().st_size / 1e6:.1f} MB from {args.input}")

    ours_s = base_s = float("inf")
    for _ in range(max(1, args.repeats)):
        ours_s = min(ours_s, run_ours(corpus, work / "ours", args.workers, args.backend))
        base_s = min(base_s, run_baseline(corpus, work / "baseline", hf_dir / "tokenizer.json", args.workers))
    for suffix in (".bin", ".idx"):
        a, b = Path(f"{work}/ours{suffix}").read_bytes(), Path(f"{work}/baseline{suffix}").read_bytes()
        if a != b:
            raise AssertionError(f"ours{suffix} != baseline{suffix}: the token ids differ")
    tokens = Path(f"{work}/ours.bin").stat().st_size // 4
    ours_rate, base_rate = tokens / ours_s, tokens / base_s
    from data.tokenizer import load_tokenizer

    backend = load_tokenizer(backend=args.backend).backend
    print(f"identical ids: yes ({tokens} tokens, {docs} documents; .bin and .idx byte-identical)")
    print(f"end to end (launch to exit), {args.workers} workers, {os.cpu_count()} cores:")
    print(f"baseline (HF tokenizers per document): {base_s:6.2f} s  {base_rate / 1e6:6.2f} Mtok/s")
    print(f"ours     (data/prepare.py, {backend}):  {ours_s:6.2f} s  {ours_rate / 1e6:6.2f} Mtok/s")
    print(f"ratio: {ours_rate / base_rate:.1f}x")


if __name__ == "__main__":
    main()
