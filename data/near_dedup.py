"""Near-duplicate removal: MinHash LSH (datasketch) with StarCoder's settings.

A document's set is its 5-gram shingles of word tokens (runs of `\w`: the StarCoder / bigcode near-deduplication
tokens [A-Za-z0-9_], extended to letters and digits of every script so that prose in any language has shingles); 256 MinHash permutations (datasketch's default "affine32" scheme, seed 1)
estimate the Jaccard similarity of two sets, and datasketch's MinHashLSH with threshold 0.7 picks its banding
(b bands of r rows minimising false positives + false negatives at 0.7) to find candidate pairs. A candidate
is confirmed only when the two signatures' estimated Jaccard is >= the threshold, so a chance band collision
does not remove a file.

Which copy survives: documents are checked in input order against the ones kept so far; a document whose
confirmed candidates are non-empty is dropped and its "kept twin" is the earliest of them. The first copy of
each cluster is kept and the decision depends only on the input order, never on the worker count (signatures
are computed in workers, decisions made in one place). Cost: one 256 x uint32 signature (1 KiB) per kept
document held in memory, and ~n_shingles x 256 uint32 multiply-adds per document in the workers.

Shingle hashes are CRC-32 based (zlib), not Python's salted str hash, so signatures computed on different
machines (data/shards.py) compare.
"""
from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

WORD_TOKEN = re.compile(r"\w+")
_ROLL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling shingle hash
_CHUNK = 4096  # shingles per datasketch update_batch call: bounds the shingles x permutations matrix to 4 MiB


@dataclass(frozen=True)
class NearDedupConfig:
    """StarCoder's near-deduplication settings (bigcode-dataset near_deduplication) by default."""

    enabled: bool = True
    shingle: int = 5  # word tokens per shingle
    num_perm: int = 256  # MinHash permutations
    threshold: float = 0.7  # estimated Jaccard at or above which two documents are near-duplicates
    seed: int = 1  # datasketch's permutation seed: signatures compare only under the same seed

    def __post_init__(self) -> None:
        if self.shingle < 1 or self.num_perm < 2 or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"near-dedup needs shingle >= 1, num_perm >= 2 and 0 < threshold <= 1, got {self}")


def shingle_hashes(text: str, shingle: int) -> np.ndarray:
    """Distinct 32-bit hashes of the text's `shingle`-grams of word tokens (one shingle if it has fewer)."""
    tokens = WORD_TOKEN.findall(text)
    if not tokens:
        return np.zeros(0, dtype=np.uint32)
    words = np.array(list(map(zlib.crc32, map(str.encode, tokens))), dtype=np.uint64)
    width = min(shingle, len(words))
    count = len(words) - width + 1
    rolled = np.zeros(count, dtype=np.uint64)
    for offset in range(width):
        rolled = rolled * _ROLL + words[offset:offset + count]
    folded = (rolled ^ (rolled >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return np.unique(folded)


@functools.lru_cache(maxsize=4)
def _template(num_perm: int, seed: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=int)  # our shingle hashes are already integers


def signature(text: str, config: NearDedupConfig) -> Optional[np.ndarray]:
    """The document's MinHash signature: `num_perm` uint32 values (datasketch MinHash.hashvalues); None for a
    document without a word (the empty set's signature would make all such documents near-duplicates)."""
    hashes = shingle_hashes(text, config.shingle).tolist()
    if not hashes:
        return None
    minhash = _template(config.num_perm, config.seed).copy()
    for start in range(0, len(hashes), _CHUNK):
        minhash.update_batch(hashes[start:start + _CHUNK])
    return minhash.hashvalues


class NearDuplicateIndex:
    """The documents kept so far; `check` decides one document, in input order."""

    def __init__(self, config: NearDedupConfig) -> None:
        from datasketch import MinHashLSH

        self.config = config
        self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._kept: List[str] = []  # origin of each kept document, by key
        self._signatures: Dict[int, np.ndarray] = {}

    def _minhash(self, values: np.ndarray):
        from datasketch import MinHash

        template = _template(self.config.num_perm, self.config.seed)
        return MinHash(seed=self.config.seed, hashvalues=values, permutations=template.permutations,
                       scheme=template.scheme)

    def check(self, values: np.ndarray, origin: str) -> Optional[str]:
        """None (kept and indexed) or the origin of the earliest kept document it nearly duplicates."""
        minhash = self._minhash(values)
        twins = [key for key in self.lsh.query(minhash)
                 if float(np.mean(self._signatures[key] == values)) >= self.config.threshold]
        if twins:
            return self._kept[min(twins)]
        key = len(self._kept)
        self._kept.append(origin)
        self._signatures[key] = values
        self.lsh.insert(key, minhash, check_duplication=False)
        return None


class Deduplicator:
    """Exact and near duplicates, decided in input order in one process: the first copy is kept."""

    def __init__(self, near: NearDedupConfig) -> None:
        self.keys: set = set()
        self.config = near
        self.near: Optional[NearDuplicateIndex] = None  # built at the first signature: importing datasketch
        # (scipy) takes ~1 s, which prepare() should not spend before its workers start reading

    def check(self, key: Optional[bytes], values: Optional[np.ndarray], origin: str) -> Optional[Tuple[str, str]]:
        """None to keep, else (reason, detail) naming the kept twin for a near duplicate."""
        if key is not None:
            if key in self.keys:
                return "duplicate", "exact copy of an earlier record"
            self.keys.add(key)
        if values is not None and self.config.enabled:
            self.near = self.near or NearDuplicateIndex(self.config)
            twin = self.near.check(values, origin)
            if twin is not None:
                return "near_duplicate", f"near copy of {twin} (kept)"
        return None
