"""Characters as tokens (data/shakespeare.py's `--tokenizer char`, and any text given with `--text`): id 0 is
the document separator, ids 1..n the distinct characters sorted by code point; `vocab.json` beside the
shards holds the vocabulary."""

import json
from dataclasses import dataclass

import numpy as np

from data.fineweb import EOT_TEXT

CHAR_SEPARATOR_ID = 0


@dataclass(frozen=True)
class CharVocab:
    """Characters as tokens: id 0 is the document separator, id i >= 1 is ``chars[i - 1]``."""

    chars: str  # distinct, sorted by code point

    separator_id = CHAR_SEPARATOR_ID

    @classmethod
    def from_texts(cls, texts):
        """The vocabulary of every character in ``texts``."""
        return cls("".join(sorted(set().union(*map(set, texts)))))

    @property
    def vocab_size(self):
        return len(self.chars) + 1

    def encode(self, text):
        """The ids of the characters of ``text`` (uint16); an unknown character is an error."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        known = np.array([ord(c) for c in self.chars], dtype="<u4")
        index = np.minimum(np.searchsorted(known, codes), len(known) - 1)
        bad = known[index] != codes
        if bad.any():
            raise ValueError(f"character {chr(codes[np.argmax(bad)])!r} is not in the vocabulary")
        return (index + 1).astype(np.uint16)

    def decode(self, ids):
        """The text of ``ids``; the separator reads as ``<|endoftext|>``."""
        table = [EOT_TEXT, *self.chars]
        return "".join(table[int(i)] for i in ids)

    def to_json(self):
        """What ``vocab.json`` holds."""
        return {"tokenizer": "char", "vocab_size": self.vocab_size,
                "separator_id": self.separator_id, "separator": EOT_TEXT,
                "id_to_char": {str(i + 1): c for i, c in enumerate(self.chars)}}


def load_char_vocab(path):
    """The CharVocab of a ``vocab.json`` written by this tool (checked for consistency)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    id_to_char = data["id_to_char"]
    chars = "".join(id_to_char[str(i)] for i in range(1, len(id_to_char) + 1))
    vocab = CharVocab(chars)
    if (data["separator_id"], data["vocab_size"]) != (vocab.separator_id, vocab.vocab_size) \
            or sorted(chars) != list(chars) or len(set(chars)) != len(chars):
        raise ValueError(f"{path}: inconsistent vocabulary (ids, separator or size)")
    return vocab


def split_documents(ids, separator_id):
    """The documents (without separators) of a token stream in which each starts with the
    separator."""
    ids = np.asarray(ids)
    starts = np.flatnonzero(ids == separator_id).tolist()
    if not starts or starts[0] != 0:
        raise ValueError("the token stream does not start with a separator")
    return [ids[a + 1:b] for a, b in zip(starts, starts[1:] + [len(ids)])]


def char_tokens(docs, vocab):
    """[separator] + the character ids of each document, concatenated."""
    parts = [np.concatenate([[vocab.separator_id], vocab.encode(d.text)]) for d in docs]
    return [p.astype(np.uint16) for p in parts]
