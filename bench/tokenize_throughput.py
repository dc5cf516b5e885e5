"""Tokenize throughput, end to end: data/prepare.py vs Megatron's preprocess_data algorithm, same input, same run.

    python bench/tokenize_throughput.py                       # Python stdlib .py files, 2 workers
    python bench/tokenize_throughput.py --input DIR --workers 4

Baseline (the algorithm of Megatron-LM tools/preprocess_data.py, re-implemented here because
megatron.training is not importable): a multiprocessing Pool of N workers, `imap(encode, jsonl_lines, 32)`,
each worker json.loads the line and encodes the text with Hugging Face `tokenizers` one document at a time
(tokenizer.json derived from the same ranks, data/hf_export.py), appends <|endoftext|>; the main process
adds each document to megatron's IndexedDatasetBuilder. Megatron wraps the tokenizer in transformers'
AutoTokenizer, which is slower still, so this baseline is the faster variant of the algorithm.

Ours, twice, same worker count:
- plain: `python data/prepare.py --mode text` with flags that keep every line; its .bin and .idx must be
  byte-identical to the baseline's: identical ids, document for document.
- cleaned: `python data/prepare.py` with its defaults (file mode: size and line limits, exact and MinHash
  near-duplicate removal, decontamination, quality rules); every document it keeps must equal the baseline's
  document for the same line; the last line says whether it is still faster than the baseline.
Then each cleaning step's cost on the same corpus, on one core in this process (CPU seconds per GB of text).
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


KEEP_EVERYTHING = ("--mode", "text", "--max-bytes", 0, "--max-line-length", 0, "--no-dedupe", "--no-near-dedup",
                   "--no-decontaminate")


def run_ours(jsonl: Path, prefix: Path, workers: int, backend: str, cleaning: bool) -> float:
    elapsed = timed(["data/prepare.py", "--input", jsonl, "--output-prefix", prefix, "--workers", workers,
                     "--tokenizer-backend", backend, "--no-progress", *(() if cleaning else KEEP_EVERYTHING)])
    skipped = json.loads(Path(f"{prefix}.report.json").read_text())["records"]["skipped"]
    if skipped and not cleaning:
        raise AssertionError(f"our path skipped {skipped} records, outputs cannot be compared")
    return elapsed


def check_cleaned_subset(cleaned: Path, baseline: Path) -> int:
    """Every cleaned document equals the baseline's document of the same line, in order; returns their count."""
    from data.pipeline import read_back

    base = iter(read_back(baseline))
    kept = read_back(cleaned)
    for number, document in enumerate(kept):
        if not any(np.array_equal(document, candidate) for candidate in base):
            raise AssertionError(f"cleaned document {number} is not a baseline document in input order")
    return len(kept)


def cleaning_costs(jsonl: Path) -> dict:
    """CPU seconds per GB of each cleaning step over the corpus texts, one core, against tokenizing them."""
    from data.decontaminate import default_index
    from data.languages import language_of
    from data.near_dedup import NearDedupConfig, NearDuplicateIndex, signature
    from data.quality import QualityConfig, check_quality
    from data.tokenizer import load_tokenizer

    records = [json.loads(line) for line in jsonl.open(encoding="utf-8")]
    texts = [(r["text"], language_of(r["path"])) for r in records]
    gigabytes = sum(len(text.encode("utf-8")) for text, _ in texts) / 1e9
    near, quality, index, tok = NearDedupConfig(), QualityConfig(), default_index(), load_tokenizer()
    signatures = []
    lsh = NearDuplicateIndex(near)
    steps = {
        "quality rules": lambda: [check_quality(text, language, quality) for text, language in texts],
        "decontamination (10-gram lookup)": lambda: [index.find(text) for text, _ in texts],
        "near-dedup signatures (MinHash)": lambda: signatures.extend(signature(text, near) for text, _ in texts),
        "near-dedup decisions (LSH, one process)": lambda: [lsh.check(values, str(n)) for n, values in
                                                            enumerate(signatures)],
        f"for scale: tokenizing ({tok.backend})": lambda: [tok.encode_array(text) for text, _ in texts],
    }
    costs = {}
    for name, step in steps.items():
        start = time.process_time()
        step()
        costs[name] = (time.process_time() - start) / gigabytes
    return costs


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

    ours_s = clean_s = base_s = float("inf")
    for _ in range(max(1, args.repeats)):
        ours_s = min(ours_s, run_ours(corpus, work / "ours", args.workers, args.backend, cleaning=False))
        clean_s = min(clean_s, run_ours(corpus, work / "cleaned", args.workers, args.backend, cleaning=True))
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
    kept = check_cleaned_subset(work / "cleaned", work / "baseline")
    report = json.loads(Path(f"{work}/cleaned.report.json").read_text())
    skipped = ", ".join(f"{k} {v['count']}" for k, v in report["skipped"].items()) or "none"
    print(f"ours, cleaning on (defaults): {clean_s:6.2f} s, {kept} of {docs} documents kept (each equal to the "
          f"baseline's), skipped: {skipped}")
    print(f"ratio with cleaning on: {base_s / clean_s:.1f}x the baseline's speed (same input, launch to exit)")
    print("cost per GB of text, one core (CPU seconds):")
    for name, seconds in cleaning_costs(corpus).items():
        print(f"  {name:42s} {seconds:7.1f} s/GB")
    print(f"cleaning on, prepare is {'FASTER' if clean_s <= base_s else 'SLOWER'} than Megatron's tool")


if __name__ == "__main__":
    main()
