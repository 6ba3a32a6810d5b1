"""Synthetic, learnable token data for CPU smoke runs.

The tokens come from a fixed random sparse Markov chain over the ids
[0, vocab_size) without ``eot_token``: every token has ``SUCCESSORS`` possible next
tokens with Dirichlet(1)-distributed probabilities. Its entropy rate is about
1.1 nats, far below ln(vocab_size), so a model that learns the bigram table shows a
clearly falling loss. Documents have uniformly random lengths (mean about
``MEAN_DOC_LEN``), start at a token drawn from the chain's stationary distribution,
and are each preceded by ``eot_token``, like FineWeb documents.

The data is written as real shards (``data.shard.write_shard``) so that the real
loader runs on it.
"""

import glob
import json
import os
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_json
from data.shard import HEADER_BYTES, TOKEN_DTYPE, write_shard

SUCCESSORS = 4
MEAN_DOC_LEN = 300
DOCS_PER_CHUNK = 4096
STATIONARY_ITERS = 500
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN_NAME = "synthetic_train_{:06d}.bin"
VAL_NAME = "synthetic_val_000000.bin"


class MarkovChain:
    """Sparse random transition table over the non-eot token ids.

    States are indices into ``self.token_ids``; ``successors[s]`` holds the
    ``SUCCESSORS`` distinct next states of state ``s`` and ``probs[s]`` their probabilities.
    """

    def __init__(self, vocab_size, eot_token, seed):
        if not 0 <= eot_token < vocab_size <= 65536:
            raise ValueError(f"need 0 <= eot_token ({eot_token}) < vocab_size ({vocab_size}) "
                             "<= 65536")
        if vocab_size - 1 < SUCCESSORS:
            raise ValueError(f"vocab_size must be > {SUCCESSORS}, got {vocab_size}")
        rng = np.random.default_rng((seed, 0))
        self.token_ids = np.delete(np.arange(vocab_size), eot_token)
        num_states = len(self.token_ids)
        self.successors = _distinct_successors(rng, num_states, SUCCESSORS)
        self.probs = rng.dirichlet(np.ones(SUCCESSORS), size=num_states)
        self.cumulative = np.cumsum(self.probs, axis=1)
        self.cumulative[:, -1] = 1.0  # guard against rounding below 1
        self.stationary = self._stationary_distribution()

    def _stationary_distribution(self):
        """Stationary distribution by power iteration of the lazy chain (P + I) / 2."""
        num_states = len(self.token_ids)
        pi = np.full(num_states, 1.0 / num_states)
        for _ in range(STATIONARY_ITERS):
            flow = np.bincount(self.successors.ravel(), weights=(pi[:, None] * self.probs).ravel(),
                               minlength=num_states)
            pi = 0.5 * (pi + flow)
        return pi / pi.sum()

    def entropy_rate(self):
        """Entropy of the next token given the current one, in nats, under stationarity."""
        row_entropy = -(self.probs * np.log(self.probs)).sum(axis=1)
        return float(self.stationary @ row_entropy)

    def step(self, states, rng):
        """Sample one next state for each entry of ``states``."""
        u = rng.random(len(states))
        choice = (u[:, None] >= self.cumulative[states]).sum(axis=1)
        return self.successors[states, choice]

    def documents(self, lengths, rng):
        """Token matrix (len(lengths), max length); row i is valid up to lengths[i]."""
        states = np.empty((len(lengths), int(lengths.max())), dtype=np.int64)
        states[:, 0] = rng.choice(len(self.stationary), size=len(lengths), p=self.stationary)
        for t in range(1, states.shape[1]):
            states[:, t] = self.step(states[:, t - 1], rng)
        return self.token_ids[states]


def _distinct_successors(rng, num_states, k):
    """(num_states, k) random state indices with no repeats within a row."""
    succ = rng.integers(0, num_states, size=(num_states, k))
    while True:
        ordered = np.sort(succ, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeated.any():
            return succ
        succ[repeated] = rng.integers(0, num_states, size=(int(repeated.sum()), k))


def synthetic_entropy(vocab_size, eot_token, seed):
    """Entropy rate (nats/token) of the synthetic process, ignoring document boundaries."""
    return MarkovChain(vocab_size, eot_token, seed).entropy_rate()


def generate_tokens(chain, num_tokens, eot_token, rng):
    """Exactly ``num_tokens`` tokens: eot-prefixed documents from ``chain``."""
    pieces, total = [], 0
    while total < num_tokens:
        num_docs = min(DOCS_PER_CHUNK, (num_tokens - total) // MEAN_DOC_LEN + 1)
        lengths = rng.integers(1, 2 * MEAN_DOC_LEN, size=num_docs)
        docs = chain.documents(lengths, rng)
        flat = _flatten_documents(docs, lengths, eot_token)
        pieces.append(flat[:num_tokens - total])
        total += len(pieces[-1])
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.uint16)


def _flatten_documents(docs, lengths, eot_token):
    """Concatenate [eot] + docs[i, :lengths[i]] over all rows i."""
    padded = np.full((docs.shape[0], docs.shape[1] + 1), eot_token, dtype=np.uint16)
    padded[:, 1:] = docs
    keep = np.arange(padded.shape[1])[None, :] <= lengths[:, None]
    return padded[keep]  # boolean indexing walks rows in order


def _shard_sizes(total, num_shards):
    """Split ``total`` tokens into ``num_shards`` sizes differing by at most one."""
    base, extra = divmod(total, num_shards)
    return [base + (1 if i < extra else 0) for i in range(num_shards)]


def _planned_files(out_dir, params):
    """{path: token count} for every shard the parameters call for."""
    val = {os.path.join(out_dir, VAL_NAME): params["val_tokens"]}
    sizes = _shard_sizes(params["train_tokens"], params["num_train_shards"])
    train = {os.path.join(out_dir, TRAIN_NAME.format(i + 1)): n for i, n in enumerate(sizes)}
    return {**val, **train}


def _is_up_to_date(out_dir, params):
    """True if the manifest matches ``params`` and every planned shard has its size (the manifest is written
    last, after every shard; the run reads and checks the headers when it opens the shards)."""
    try:
        with open(os.path.join(out_dir, MANIFEST)) as f:
            if json.load(f) != params:
                return False
        return all(os.path.getsize(path) == HEADER_BYTES + count * TOKEN_DTYPE.itemsize
                   for path, count in _planned_files(out_dir, params).items())
    except (OSError, ValueError):
        return False


def _remove_stale_shards(out_dir, keep):
    """Delete synthetic shards in ``out_dir`` that are not in ``keep``."""
    for path in glob.glob(os.path.join(out_dir, "synthetic_*.bin")):
        if path not in keep:
            _remove_quietly(path)


def _remove_quietly(path):
    """Delete ``path`` if it exists (another process may have removed it first)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def synthetic_patterns(out_dir) -> tuple[str, str]:
    """The glob patterns of the synthetic train and validation shards in ``out_dir``."""
    return os.path.join(out_dir, "synthetic_train_*.bin"), os.path.join(out_dir, "synthetic_val_*.bin")


def make_synthetic_shards(out_dir, *, vocab_size, eot_token, train_tokens, val_tokens,
                          num_train_shards=2, seed=0):
    """Write synthetic train/val shards to ``out_dir`` unless they are already there.

    Returns (train glob pattern, val glob pattern). Every file is written to a
    temporary name and moved into place, and the content depends only on the
    parameters, so concurrent callers (e.g. several ranks) are harmless.
    """
    params = {"format": FORMAT_VERSION, "vocab_size": int(vocab_size),
              "eot_token": int(eot_token), "train_tokens": int(train_tokens),
              "val_tokens": int(val_tokens), "num_train_shards": int(num_train_shards),
              "seed": int(seed)}
    if num_train_shards < 1 or train_tokens < 0 or val_tokens < 0:
        raise ValueError(f"bad synthetic data parameters: {params}")
    patterns = synthetic_patterns(out_dir)
    if _is_up_to_date(out_dir, params):
        return patterns
    os.makedirs(out_dir, exist_ok=True)
    _remove_quietly(os.path.join(out_dir, MANIFEST))  # a crash below must not look finished
    chain = MarkovChain(vocab_size, eot_token, seed)
    planned = _planned_files(out_dir, params)
    for index, (path, count) in enumerate(planned.items()):
        rng = np.random.default_rng((seed, 1, index))
        write_shard(path, generate_tokens(chain, count, eot_token, rng))
    _remove_stale_shards(out_dir, planned)
    atomic_write_json(os.path.join(out_dir, MANIFEST), params)
    return patterns


def random_shards(folder: Path, vocab_size: int, tokens: int, seed: int = 0,
                  name: str = "random_train_000001.bin") -> list[str]:
    """One shard of uniformly random tokens (benchmarks: the content does not change a step's time)."""
    rng = np.random.default_rng(seed)
    path = folder / name
    write_shard(path, rng.integers(0, vocab_size, size=tokens, dtype=np.uint16))
    return [str(path)]
