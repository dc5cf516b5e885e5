"""Build token documents: file-level, repo-level (Qwen2.5-Coder format) and plain text.

Special ids are inserted structurally; every piece of text is encoded as ordinary text, so a literal
"<|file_sep|>" inside a file stays text. Encoding the text between special tokens separately is exactly
what a HF tokenizer does with the formatted string (added tokens split the text first), so the ids equal
`hf.encode(repo_text(...))` token for token (tests/test_data_prepare.py).

Repo-level format (paper section 3; QwenLM/Qwen2.5-Coder README):
    <|repo_name|>{name}\\n<|file_sep|>{path}\\n{content}\\n<|file_sep|>{path}\\n{content}\\n<|endoftext|>
Decision: every file, the last one too, ends with "\\n". Each file's tokens then do not depend on its
position, so a repository longer than the stage's sequence budget (8,192 / 32,768) is split between files
without re-tokenizing: files are packed greedily in their stable order into chunks of at most `seq_length`
tokens, each chunk starting with its own <|repo_name|> header. A single file larger than the budget gets a
chunk of its own (counted as over budget in the report; GPTDataset splits it across samples).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from data.tokenizer import EOD, FILE_SEP, REPO_NAME, Tokenizer


@dataclass
class Document:
    """One output document (tokens end with <|endoftext|>) plus what the report needs."""

    tokens: np.ndarray
    origin: str  # first input record, for report examples
    languages: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # language -> (records, tokens)
    over_budget: bool = False  # repo chunk longer than the sequence budget


def content_key(*parts: str) -> bytes:
    """128-bit BLAKE2b of the parts (length-prefixed, so ("ab","c") != ("a","bc"))."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()


def file_document(tok: Tokenizer, text: str, language: str, origin: str) -> Document:
    """File-level / text document: tokenizer(text) + [<|endoftext|>]."""
    ids = tok.encode_array(text)
    tokens = np.empty(len(ids) + 1, dtype=np.int32)
    tokens[:-1] = ids
    tokens[-1] = tok.eod
    return Document(tokens, origin, {language: (1, len(tokens))})


def repo_text(name: str, files: Sequence[Tuple[str, str]]) -> str:
    """The repo document as one string with literal special tokens (the format's reference form)."""
    body = "".join(f"{FILE_SEP}{path}\n{content}\n" for path, content in files)
    return f"{REPO_NAME}{name}\n{body}{EOD}"


def repo_documents(
    tok: Tokenizer,
    name: str,
    files: Sequence[Tuple[str, str, str, str]],
    seq_length: int,
) -> List[Document]:
    """Repo-level documents for (path, content, language, origin) files in their stable order.

    seq_length: the token budget per document (0: one document per repository, never split).
    """
    if not files:
        return []
    header = np.concatenate([[tok.special[REPO_NAME]], tok.encode_array(f"{name}\n")]).astype(np.int32)
    file_sep = tok.special[FILE_SEP]
    pieces = tok.encode_batch([f"{path}\n{content}\n" for path, content, _, _ in files])
    segments = [np.concatenate([[file_sep], ids]).astype(np.int32) for ids in pieces]

    chunks: List[List[int]] = []
    length = 0
    for index, segment in enumerate(segments):
        if chunks and (seq_length <= 0 or length + len(segment) + 1 <= seq_length):
            chunks[-1].append(index)
            length += len(segment)
        else:
            chunks.append([index])
            length = len(header) + len(segment)
    documents = []
    for number, chunk in enumerate(chunks):
        tokens = np.concatenate([header] + [segments[i] for i in chunk] + [np.array([tok.eod], np.int32)])
        languages: Dict[str, Tuple[int, int]] = {}
        for i in chunk:
            records, count = languages.get(files[i][2], (0, 0))
            languages[files[i][2]] = (records + 1, count + len(segments[i]))
        first_language = files[chunk[0]][2]
        records, count = languages[first_language]
        languages[first_language] = (records, count + len(header) + 1)  # header and eod tokens count once
        documents.append(
            Document(
                tokens=tokens,
                origin=f"{name} [{number + 1}/{len(chunks)}] {files[chunk[0]][3]}",
                languages=languages,
                over_budget=seq_length > 0 and len(tokens) > seq_length,
            )
        )
    return documents
