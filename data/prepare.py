"""Raw code/text -> Megatron .bin/.idx + report.  The logic lives in data/pipeline.py.

    python data/prepare.py --input ~/repos --output-prefix data/out/code --mode repo --workers 8
    python data/prepare.py --input stack.jsonl --output-prefix data/out/code --workers 8
    python data/prepare.py --input math.jsonl --output-prefix data/out/math --mode text
"""
import argparse
import os
import sys
from pathlib import Path

from data.filters import FilterConfig, parse_languages
from data.near_dedup import NearDedupConfig
from data.pipeline import PREPARE_MODES, PrepareOptions, prepare
from data.quality import QualityConfig
from data.report import BadInputError
from data.sources import DEFAULT_EXCLUDE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, type=Path,
                   help="directories (of source files; of repositories in repo mode) and/or JSONL files")
    p.add_argument("--output-prefix", required=True, type=Path, help="writes PREFIX.bin, PREFIX.idx, PREFIX.report.json")
    p.add_argument("--mode", choices=PREPARE_MODES, default="file", help="file-level, repo-level or plain text documents")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output is identical for any value)")
    p.add_argument("--seed", type=int, default=1234, help="recorded in the report (prepare itself is not random)")
    p.add_argument("--strict", action="store_true", help="malformed input is an error instead of a counted skip")
    p.add_argument("--seq-length", type=int, default=32768, help="repo mode: token budget per document (0: no split)")
    p.add_argument("--tokenizer", default="qwen2.5", help="'qwen2.5' (offline) or a HF tokenizer directory")
    p.add_argument("--tokenizer-backend", default="auto", choices=("auto", "tiktoken", "gigatoken"))
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="drop larger files (0: no limit)")
    p.add_argument("--max-line-length", type=int, default=None,
                   help="drop files with a longer line (default 1000 for file/repo, off for text; 0: off)")
    p.add_argument("--no-dedupe", action="store_true", help="keep exact duplicates")
    p.add_argument("--languages", default=None, help="keep only these languages, e.g. python,c")
    p.add_argument("--no-quality", action="store_true", help="keep generated, data-like and low-quality code")
    p.add_argument("--no-decontaminate", action="store_true",
                   help="keep documents sharing a 10-gram with an evaluation problem (HumanEval, GSM8K, ...)")
    p.add_argument("--no-near-dedup", action="store_true", help="keep near-duplicates (MinHash LSH)")
    p.add_argument("--near-dedup", nargs=3, type=float, default=(5, 256, 0.7), metavar=("SHINGLE", "PERMS", "JACCARD"),
                   help="near-dedup settings: word tokens per shingle, MinHash permutations, Jaccard threshold "
                        "(default StarCoder's: 5 256 0.7)")
    p.add_argument("--exclude", nargs="*", default=[], metavar="GLOB",
                   help="more directory/file names that are not inputs, on top of the defaults; 'NAME/' matches "
                        f"directories only (defaults: {' '.join(DEFAULT_EXCLUDE)})")
    p.add_argument("--no-default-exclude", action="store_true", help="read the default-excluded folders too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="errors with their traceback (as HYDRA_FULL_ERROR=1)")
    return p


def _options(a: argparse.Namespace) -> PrepareOptions:
    max_line = a.max_line_length if a.max_line_length is not None else (0 if a.mode == "text" else 1000)
    shingle, perms, jaccard = a.near_dedup
    near_dedup = NearDedupConfig(enabled=not a.no_near_dedup, shingle=int(shingle), num_perm=int(perms),
                                 threshold=jaccard)
    return PrepareOptions(
        inputs=a.input, output_prefix=a.output_prefix, mode=a.mode, workers=a.workers, seed=a.seed,
        strict=a.strict, seq_length=a.seq_length, tokenizer=a.tokenizer, tokenizer_backend=a.tokenizer_backend,
        filters=FilterConfig(max_bytes=a.max_bytes, max_line_length=max_line, dedupe=not a.no_dedupe,
                             languages=parse_languages(a.languages), quality=QualityConfig(enabled=not a.no_quality),
                             decontaminate=not a.no_decontaminate, near_dedup=near_dedup),
        exclude=(() if a.no_default_exclude else DEFAULT_EXCLUDE) + tuple(a.exclude), progress=not a.no_progress,
    )


def parse_args(argv=None) -> PrepareOptions:
    return _options(_parser().parse_args(argv))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    options = _options(args)
    try:
        report = prepare(options)
    except BadInputError as error:
        if args.debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stderr)
    print(f"wrote {options.output_prefix}.bin/.idx and {options.output_prefix}.report.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
