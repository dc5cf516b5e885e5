"""Derive a Hugging Face tokenizer (vocab.json, merges.txt, tokenizer.json) from the tiktoken ranks.

Why: acceptance 1 compares our tokenizer with an *independent* implementation (the Rust `tokenizers`
BPE engine) built from the same ranks, and users who want a HF tokenizer directory get one offline.

How the merges are recovered: a tiktoken rank table is a merge list in disguise. For every multi-byte
token T with rank r, run byte-level BPE on T's bytes using only ranks < r; it stops at exactly two
parts (a, b), and "a b" is merge number r - 256. For Qwen2.5's 151,643 ranks this yields 151,387 merges
with no token left unreachable, in ~1.2 s. Byte-level symbols use the usual printable-byte mapping
(bytes that are printable Latin-1 map to themselves, the other 68 to U+0100 upwards), written here from
its definition. The pipeline around the BPE (NFC normaliser, Qwen2 split regex with Isolated behaviour,
ByteLevel without its own regex, ByteLevel decoder) mirrors Qwen2's released tokenizer.json, and so do the
added tokens' flags: ids 151643-151656 "special": true, the 8 of NOT_SPECIAL_IN_RELEASE (151657-151664:
tool-call tags, FIM sentinels, <|repo_name|>, <|file_sep|>) "special": false. A directory written here thus
behaves like a downloaded one, literal "<|file_sep|>" in text matching the token included (data.tokenizer's
HFTokenizer keeps such text ordinary anyway).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from data.tokenizer import EOD, IM_END, NOT_SPECIAL_IN_RELEASE, QWEN2_PATTERN, SPECIAL_TOKENS, load_ranks


def byte_to_symbol() -> Dict[int, str]:
    """Map each byte to a printable character so byte-level tokens are valid JSON strings."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    mapping, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(0x100 + shifted)
            shifted += 1
    return mapping


def _split_by_lower_ranks(token: bytes, rank: int, ranks: Dict[bytes, int]) -> List[bytes]:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_at = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best_rank is None or r < best_rank):
                best_rank, best_at = r, i
        if best_rank is None:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def derive_merges(ranks: Dict[bytes, int]) -> List[Tuple[bytes, bytes]]:
    """Merges in priority order (index = rank of the merged token - 256)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _split_by_lower_ranks(token, rank, ranks)
        if len(parts) != 2:
            raise ValueError(
                f"rank {rank} ({token!r}) is not the merge of two lower-ranked tokens ({len(parts)} parts): "
                "these ranks cannot be expressed as a merges.txt"
            )
        merges.append((parts[0], parts[1]))
    return merges


def build_hf_tokenizer(ranks: Optional[Dict[bytes, int]] = None, special_tokens: Optional[Dict[str, int]] = None):
    """A `tokenizers.Tokenizer` equivalent to Qwen2.5's released tokenizer.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    ranks = ranks if ranks is not None else load_ranks()
    special_tokens = special_tokens if special_tokens is not None else SPECIAL_TOKENS
    sym = byte_to_symbol()
    to_str = lambda b: "".join(sym[x] for x in b)  # noqa: E731
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in derive_merges(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    first_special = len(ranks)
    for name, token_id in sorted(special_tokens.items(), key=lambda item: item[1]):
        if token_id != tok.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"special ids must follow the ranks densely: {name} has {token_id}")
        special = name not in NOT_SPECIAL_IN_RELEASE
        tok.add_tokens([AddedToken(name, special=special, normalized=False)])
    assert tok.token_to_id(min(special_tokens, key=special_tokens.get)) == first_special
    return tok


def export_hf_tokenizer(out_dir: Path, ranks_path: Optional[Path] = None, chat: bool = False) -> Path:
    """Write tokenizer.json, vocab.json, merges.txt and a tokenizer_config.json (with Qwen2.5's chat template).

    `chat` is for SFT/DPO checkpoints: eos_token <|im_end|> as in the released Instruct tokenizers (the base ones
    end on <|endoftext|>), so `generate` stops at the end of the assistant's turn.
    Reuses an existing export (tests and the benchmark share one); delete the directory to rebuild.
    """
    out_dir = Path(out_dir)
    eos = IM_END if chat else EOD
    config_path = out_dir / "tokenizer_config.json"
    if (out_dir / "tokenizer.json").is_file() and config_path.is_file() \
            and json.loads(config_path.read_text()).get("eos_token") == eos:
        return out_dir
    from data.sft import CHAT_TEMPLATE  # Qwen2.5's chat format has its one home with the SFT renderer

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_hf_tokenizer(load_ranks(ranks_path))
    tmp = out_dir / "tokenizer.json.tmp"
    tok.save(str(tmp))
    tok.model.save(str(out_dir))  # vocab.json + merges.txt
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": eos,
        "pad_token": EOD,
        "model_max_length": 131072,
        "additional_special_tokens": [name for name in list(SPECIAL_TOKENS)[1:] if name not in NOT_SPECIAL_IN_RELEASE],
        "chat_template": CHAT_TEMPLATE,
    }
    config_path.write_text(json.dumps(config, indent=1))
    tmp.rename(out_dir / "tokenizer.json")  # last, so a half-written export is never reused
    return out_dir


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Export Qwen2.5's tokenizer as a HF tokenizer directory")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    print(export_hf_tokenizer(args.out_dir))


if __name__ == "__main__":
    main()
