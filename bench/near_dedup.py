"""Near-duplicate removal, measured: recall on planted near-copies, precision against planted look-alikes.

    python bench/near_dedup.py                   # 300 standard-library modules as originals
    python bench/near_dedup.py --originals 100 --shingle 5 --perms 256 --threshold 0.7

Corpus: real Python modules of the running interpreter's standard library (200+ word tokens each) whose
exact shingle-set Jaccard with every other chosen module is < 0.5 (checked pairwise here, independent of
MinHash), so the originals hold no near-duplicates of their own. For every original the corpus gets, in a
shuffled order after all originals:
- a near-copy: one of three edits, in turn: an identifier renamed everywhere (a mid-frequency name), comments
  edited (every third comment line rewritten, a comment added), or the import lines reordered;
- a look-alike that must stay: the original's first 40 % followed by the middle 40 % of another module
  (shared header and imports, different code; exact Jaccard < 0.5 with both modules).
Recall = planted near-copies removed / planted; precision = removed documents that are planted near-copies /
removed. Decisions are data/near_dedup.py's, in input order (the original comes first, so it is the kept twin).
"""
from __future__ import annotations

import argparse
import random
import re
import sysconfig
import time
from pathlib import Path
from typing import Dict, List, Tuple

from data.near_dedup import WORD_TOKEN, NearDedupConfig, NearDuplicateIndex, signature

STDLIB = Path(sysconfig.get_paths()["stdlib"])
KEYWORDS = frozenset("and as assert async await break class continue def del elif else except False finally for "
                     "from global if import in is lambda None nonlocal not or pass raise return self True try "
                     "while with yield".split())


def shingle_set(text: str, shingle: int) -> set:
    """Exact shingles (tuples of word tokens): the reference Jaccard, independent of any hashing."""
    tokens = WORD_TOKEN.findall(text)
    return {tuple(tokens[i:i + shingle]) for i in range(max(1, len(tokens) - shingle + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def rename_identifier(text: str, rng: random.Random) -> str:
    counts: Dict[str, int] = {}
    for token in WORD_TOKEN.findall(text):
        if token not in KEYWORDS and not token[0].isdigit() and len(token) > 2:
            counts[token] = counts.get(token, 0) + 1
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    name = ranked[min(len(ranked) - 1, rng.randrange(5, 20))]
    return re.sub(rf"\b{re.escape(name)}\b", name + "_renamed", text)


def edit_comments(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    comments = [i for i, line in enumerate(lines) if line.lstrip().startswith("#")]
    for number, index in enumerate(comments):
        if number % 3 == 0:
            indent = lines[index][:len(lines[index]) - len(lines[index].lstrip())]
            lines[index] = f"{indent}# note {rng.randrange(1000)}: reviewed, behaviour unchanged"
    lines.insert(min(len(lines), 1), "# Edited copy.")
    return "\n".join(lines)


def reorder_imports(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    imports = [i for i, line in enumerate(lines) if re.match(r"(import|from) \w", line)]
    moved = [lines[i] for i in imports]
    rng.shuffle(moved)
    for index, line in zip(imports, moved):
        lines[index] = line
    return "\n".join(lines)


EDITS = (rename_identifier, edit_comments, reorder_imports)


def originals(count: int, shingle: int) -> List[Tuple[str, str, set]]:
    chosen: List[Tuple[str, str, set]] = []
    for path in sorted(STDLIB.glob("*.py")) + sorted(STDLIB.glob("*/*.py")):
        if len(chosen) == count:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not 200 <= len(WORD_TOKEN.findall(text)) <= 20000:
            continue
        shingles = shingle_set(text, shingle)
        if all(jaccard(shingles, other) < 0.5 for _, _, other in chosen):
            chosen.append((str(path.relative_to(STDLIB)), text, shingles))
    return chosen


def build_corpus(count: int, shingle: int, seed: int = 0):
    """[(name, text, kind)] with kind 'original' | 'copy' | 'lookalike', plus the exact Jaccard of each planted
    document with its original (a look-alike: the larger of its two sources')."""
    rng = random.Random(seed)
    base = originals(count, shingle)
    planted, similarity = [], {}
    for number, (name, text, shingles) in enumerate(base):
        copy = EDITS[number % len(EDITS)](text, rng)
        planted.append((f"{name}#copy", copy, "copy"))
        similarity[f"{name}#copy"] = jaccard(shingles, shingle_set(copy, shingle))
        # The next module is the partner: each module lends its middle to one look-alike only (two look-alikes
        # sharing a large partner would be near-duplicates of each other).
        _, other, other_shingles = base[(number + 1) % len(base)]
        lookalike = text[:len(text) * 2 // 5] + other[len(other) * 3 // 10:len(other) * 7 // 10]
        lookalike_shingles = shingle_set(lookalike, shingle)
        closest = max(jaccard(shingles, lookalike_shingles), jaccard(other_shingles, lookalike_shingles))
        if closest < 0.5:  # a repetitive module can keep most of its shingles in 40 %: no look-alike then
            planted.append((f"{name}#lookalike", lookalike, "lookalike"))
            similarity[f"{name}#lookalike"] = closest
    rng.shuffle(planted)
    return [(name, text, "original") for name, text, _ in base] + planted, similarity


def measure(corpus, similarity, config: NearDedupConfig) -> Dict[str, float]:
    index = NearDuplicateIndex(config)
    removed = {name: kind for name, text, kind in corpus if index.check(signature(text, config), name) is not None}
    copies = sum(kind == "copy" for _, _, kind in corpus)
    true_positives = sum(kind == "copy" for kind in removed.values())
    above = [name for name, _, kind in corpus if kind == "copy" and similarity[name] >= config.threshold]
    return {
        "copies": copies, "removed": len(removed), "true_positives": true_positives,
        "recall": true_positives / copies, "precision": true_positives / len(removed) if removed else 1.0,
        "recall_above_threshold": sum(name in removed for name in above) / len(above), "above": len(above),
        "lookalikes_removed": sum(kind == "lookalike" for kind in removed.values()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--shingle", type=int, default=5)
    parser.add_argument("--perms", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=0.7)
    args = parser.parse_args(argv)
    config = NearDedupConfig(shingle=args.shingle, num_perm=args.perms, threshold=args.threshold)
    corpus, similarity = build_corpus(args.originals, args.shingle)
    start = time.process_time()  # CPU seconds of this process: a shared machine's wall clock is noisy
    result = measure(corpus, similarity, config)
    seconds = time.process_time() - start
    megabytes = sum(len(text.encode("utf-8")) for _, text, _ in corpus) / 1e6
    copies = sorted(v for k, v in similarity.items() if k.endswith("#copy"))
    lookalikes = sorted(v for k, v in similarity.items() if k.endswith("#lookalike"))
    print(f"corpus: {len(corpus)} documents, {megabytes:.1f} MB ({args.originals} originals, {result['copies']} "
          f"near-copies with exact Jaccard {copies[0]:.2f}-{copies[-1]:.2f}, {len(lookalikes)} look-alikes "
          f"{lookalikes[0]:.2f}-{lookalikes[-1]:.2f})")
    print(f"near-dedup (shingle {args.shingle}, {args.perms} permutations, Jaccard {args.threshold}): "
          f"recall {result['recall']:.3f} ({result['true_positives']}/{result['copies']}; "
          f"{result['recall_above_threshold']:.3f} of the {result['above']} with exact Jaccard >= {args.threshold}), "
          f"precision "
          f"{result['precision']:.3f} ({result['true_positives']}/{result['removed']}; look-alikes removed "
          f"{result['lookalikes_removed']}), {seconds:.1f} CPU s ({megabytes / seconds:.1f} MB/s on one core)")


if __name__ == "__main__":
    main()
