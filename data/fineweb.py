"""Tokenize text into GPT-2 token shards (the format of data/shard.py).

Sources (choose one):
    --hf-dataset HuggingFaceFW/fineweb [--hf-name sample-10BT]  needs `pip install datasets`
    --text-files a.txt b.txt [--one-doc-per-file]  blank lines separate documents
    --local-dataset DIR                            .parquet / .jsonl files with a text field

Each document becomes [<|endoftext|>] + its tokens. The first ``--shard-size`` tokens
go to ``{prefix}_val_000000.bin``, the following ones to ``{prefix}_train_000001.bin``,
``..._000002.bin``, ...; documents may continue from one shard into the next, and the
last, partial shard is written too. The prefix is ``fineweb`` for the Hugging Face dataset and
``text`` for your own files (``--prefix``). The tool prints each shard's token count and, for
``--text-files``, which files the validation shard came from, with a warning when they are all one
file of several (validation then measures one kind of text).

``--bpe FILE`` reads a local ``.tiktoken`` BPE ranks file instead of fetching the GPT-2 vocabulary,
for a machine without internet; the file itself comes from a machine with it (BPE_HELP).

Example::

    python -m data.fineweb --text-files corpus.txt --out data/mytext --shard-size 1000000
"""

import argparse
import glob
import hashlib
import json
import os
import re
from multiprocessing import Pool

import numpy as np

from common.paths import REPO
from data.shard import MAX_TOKEN, read_header, write_shard

GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TEXT = "<|endoftext|>"
EOT_ID = 50256
DEFAULT_OUT = os.path.join(str(REPO), "data", "fineweb10B")
BPE_HELP = (
    "GPT-2's BPE ranks without tiktoken's download, fetched once on a machine with internet: the openai-whisper\n"
    "source distribution ships them:\n"
    "  pip download --no-deps --no-binary :all: openai-whisper -d /tmp/whisper\n"
    "  tar -xzf /tmp/whisper/openai_whisper-*.tar.gz --wildcards '*/whisper/assets/gpt2.tiktoken' "
    "--strip-components=3\n"
    "then copy gpt2.tiktoken over and pass --bpe gpt2.tiktoken"
)

# ----- tokenizer -----------------------------------------------------------------


def load_encoder(bpe_path=None):
    """The GPT-2 tokenizer: from a local ``.tiktoken`` ranks file, or tiktoken's registry."""
    import tiktoken

    if bpe_path is None:
        return tiktoken.get_encoding("gpt2")
    from tiktoken.load import load_tiktoken_bpe

    if not os.path.isfile(bpe_path):
        raise SystemExit(f"--bpe {bpe_path}: no such file\n{BPE_HELP}")
    with open(bpe_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    # tiktoken caches files by path; the hash makes it re-read a file that changed.
    ranks = load_tiktoken_bpe(bpe_path, expected_hash=digest)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: EOT_ID})


def tokenize_document(text, encoder):
    """[eot] + the ordinary tokens of ``text``, as a uint16 array."""
    ids = np.array([encoder.eot_token] + encoder.encode_ordinary(text), dtype=np.int64)
    if ids.max() > MAX_TOKEN:
        raise ValueError(f"token id {int(ids.max())} does not fit in uint16 shards")
    return ids.astype(np.uint16)


_worker_encoder = None


def _init_worker(encoder):
    """Pool initializer: keep the encoder in the worker process."""
    global _worker_encoder
    _worker_encoder = encoder


def _tokenize_in_worker(text):
    """Pool task: tokenize one document with the worker's encoder."""
    return tokenize_document(text, _worker_encoder)


def tokenize_documents(docs, encoder, *, workers=1, chunksize=16):
    """Yield the token array of each document of ``docs``, in order.

    With ``workers > 1`` the documents are tokenized by a process pool (``imap``).
    """
    if workers <= 1:
        for text in docs:
            yield tokenize_document(text, encoder)
        return
    with Pool(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
        yield from pool.imap(_tokenize_in_worker, docs, chunksize=chunksize)


# ----- shards --------------------------------------------------------------------


def shard_path(out_dir, prefix, index):
    """Path of shard ``index``: index 0 is the validation shard, the rest are train."""
    split = "val" if index == 0 else "train"
    return os.path.join(out_dir, f"{prefix}_{split}_{index:06d}.bin")


def write_token_shards(token_iter, out_dir, prefix="fineweb", shard_size=10**8):
    """Pack the token arrays of ``token_iter`` into shards of ``shard_size`` tokens.

    Returns the paths written, in order. The last shard may be shorter.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    buffer = np.empty(shard_size, dtype=np.uint16)
    filled, paths = 0, []
    for tokens in token_iter:
        while len(tokens) > 0:
            take = min(shard_size - filled, len(tokens))
            buffer[filled:filled + take] = tokens[:take]
            filled, tokens = filled + take, tokens[take:]
            if filled == shard_size:
                paths.append(shard_path(out_dir, prefix, len(paths)))
                write_shard(paths[-1], buffer)
                filled = 0
    if filled:
        paths.append(shard_path(out_dir, prefix, len(paths)))
        write_shard(paths[-1], buffer[:filled])
    return paths


# ----- document sources ----------------------------------------------------------


def split_documents(text):
    """Documents of ``text`` separated by blank lines, stripped, empty ones dropped."""
    return [doc.strip() for doc in re.split(r"\n\s*\n", text) if doc.strip()]


def iter_text_files(paths, one_doc_per_file=False, sources=None):
    """Documents from plain UTF-8 text files; ``sources`` (a list) receives each document's file, in order."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        docs = [text] if one_doc_per_file else split_documents(text)
        if sources is not None:
            sources.extend([path] * len(docs))
        yield from docs


def iter_local_dataset(path, text_field="text"):
    """Documents from the .jsonl and .parquet files under directory ``path``."""
    files = sorted(
        f for ext in ("jsonl", "parquet")
        for f in glob.glob(os.path.join(path, "**", f"*.{ext}"), recursive=True)
    )
    if not files:
        raise FileNotFoundError(f"no .jsonl or .parquet files under {path}")
    for file in files:
        if file.endswith(".jsonl"):
            yield from _iter_jsonl(file, text_field)
        else:
            yield from _iter_parquet(file, text_field)


def _iter_jsonl(path, text_field):
    """The ``text_field`` of each JSON line of ``path``."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)[text_field]


def _iter_parquet(path, text_field):
    """The ``text_field`` column of a parquet file, read in batches."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    for batch in pq.ParquetFile(path).iter_batches(columns=[text_field]):
        yield from batch.column(0).to_pylist()


def iter_hf_dataset(name, subset=None, text_field="text"):
    """Documents streamed from a Hugging Face dataset (train split)."""
    try:
        import datasets
    except ImportError:
        raise ImportError("--hf-dataset needs the `datasets` library: pip install datasets") \
            from None
    for row in datasets.load_dataset(name, name=subset, split="train", streaming=True):
        yield row[text_field]


def documents_from_args(args, sources=None):
    """The document iterator selected on the command line (``sources``: see iter_text_files)."""
    if args.hf_dataset:
        return iter_hf_dataset(args.hf_dataset, args.hf_name, args.text_field)
    if args.text_files:
        return iter_text_files(args.text_files, args.one_doc_per_file, sources)
    return iter_local_dataset(args.local_dataset, args.text_field)


# ----- command line --------------------------------------------------------------


def parse_args(argv=None):
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description="Tokenize text into GPT-2 token shards.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dataset", metavar="NAME", help="e.g. HuggingFaceFW/fineweb")
    source.add_argument("--text-files", nargs="+", metavar="PATH", help="plain text files")
    source.add_argument("--local-dataset", metavar="PATH",
                        help="directory of .parquet/.jsonl files")
    parser.add_argument("--hf-name", default="sample-10BT", help="dataset config name")
    parser.add_argument("--one-doc-per-file", action="store_true",
                        help="treat each text file as one document")
    parser.add_argument("--text-field", default="text", help="field holding the text")
    parser.add_argument("--bpe", metavar="PATH", help="local .tiktoken BPE ranks file")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--prefix", default=None, help="shard file name prefix (default: fineweb for --hf-dataset, "
                                                         "text otherwise)")
    parser.add_argument("--shard-size", type=int, default=10**8, help="tokens per shard")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunksize", type=int, default=16, help="documents per pool task")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete existing {prefix}_*.bin shards in --out first")
    args = parser.parse_args(argv)
    if args.prefix is None:
        args.prefix = "fineweb" if args.hf_dataset else "text"
    if args.shard_size < 1:
        parser.error(f"--shard-size must be positive, got {args.shard_size}")
    return args


def _clear_old_shards(out_dir, prefix, overwrite):
    """Refuse to mix with existing shards of the same prefix unless ``overwrite``."""
    existing = sorted(glob.glob(os.path.join(out_dir, f"{prefix}_*.bin")))
    if existing and not overwrite:
        raise SystemExit(f"{out_dir} already holds {len(existing)} {prefix}_*.bin shard(s) "
                         f"(e.g. {existing[0]}); pass --overwrite or choose another --out/--prefix")
    for path in existing:
        os.remove(path)


def _with_progress(token_iter, lengths):
    """Pass token arrays through, counting tokens on a tqdm bar (``lengths`` receives each document's)."""
    from tqdm import tqdm

    with tqdm(unit="tok", unit_scale=True, desc="tokenizing") as bar:
        for tokens in token_iter:
            bar.update(len(tokens))
            lengths.append(len(tokens))
            yield tokens


def report(paths, lengths, sources, shard_size) -> list[str]:
    """What was written: each shard with its tokens, and (text files) where the validation shard's documents
    came from, with a warning when they are all one file of several."""
    lines = [f"wrote {len(paths)} shard(s), {sum(lengths):,} tokens in {len(lengths):,} documents:"]
    lines += [f"  {os.path.basename(p)}: {read_header(p):,} tokens" + (" (validation)" if i == 0 else "")
              for i, p in enumerate(paths)]
    if sources:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths else np.empty(0)
        in_val = [src for src, start in zip(sources, starts) if start < shard_size]
        counts = {src: in_val.count(src) for src in dict.fromkeys(in_val)}
        lines.append("validation documents from: "
                     + ", ".join(f"{os.path.basename(s)} ({n})" for s, n in counts.items()))
        if len(counts) == 1 and len(set(sources)) > 1:
            lines.append(f"WARNING: the validation shard holds text of one file only, {next(iter(counts))}, of "
                         f"{len(set(sources))}: validation measures that kind of text. Put a mix first (or use "
                         f"python -m data.shakespeare --text FILE ..., which holds out whole documents spread over "
                         f"the files)")
    if len(paths) < 2:
        lines.append(f"WARNING: no training shard: the text holds fewer than --shard-size = {shard_size:,} tokens "
                     f"after the validation shard; choose a smaller --shard-size")
    return lines


def main(argv=None):
    """Tokenize the selected source into shards; return the paths written."""
    args = parse_args(argv)
    encoder = load_encoder(args.bpe)
    _clear_old_shards(args.out, args.prefix, args.overwrite)
    sources, lengths = [], []
    docs = documents_from_args(args, sources)
    tokens = tokenize_documents(docs, encoder, workers=args.workers, chunksize=args.chunksize)
    paths = write_token_shards(_with_progress(tokens, lengths), args.out, args.prefix, args.shard_size)
    print(f"{args.out}:")
    print("\n".join(report(paths, lengths, sources, args.shard_size)))
    return paths


if __name__ == "__main__":
    main()
