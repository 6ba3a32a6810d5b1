"""Download pre-tokenized FineWeb GPT-2 shards from the Hugging Face Hub.

Usage (from the repository root)::

    python -m data.cached_fineweb10B 8            # val shard + 8 train shards (800M tokens)
    python -m data.cached_fineweb10B 103 --dir /fast/disk/fineweb10B

Files already present and valid are skipped; invalid ones are downloaded again.
"""

import argparse
import os

from common.errors import ShardError
from common.paths import REPO
from data.shard import read_header

REPO_ID = "kjj0/fineweb10B-gpt2"
MAX_TRAIN_SHARDS = 103
DEFAULT_DIR = os.path.join(str(REPO), "data", "fineweb10B")


def shard_names(num_train):
    """File names of the validation shard and the first ``num_train`` train shards."""
    return ["fineweb_val_000000.bin"] + [
        f"fineweb_train_{i:06d}.bin" for i in range(1, num_train + 1)
    ]


def download_file(name, dest_dir):
    """Download ``name`` from the dataset repo into ``dest_dir``."""
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo_id=REPO_ID, filename=name, repo_type="dataset", local_dir=dest_dir)


def is_valid_shard(path):
    """True if ``path`` exists and has a valid shard header and size."""
    try:
        read_header(path)
        return True
    except (OSError, ShardError):
        return False


def fetch(name, dest_dir):
    """Make sure ``dest_dir/name`` is a valid shard; return 'present' or 'downloaded'."""
    path = os.path.join(dest_dir, name)
    if is_valid_shard(path):
        return "present"
    if os.path.exists(path):
        print(f"  {path} is invalid; downloading it again", flush=True)
        os.remove(path)
    download_file(name, dest_dir)
    read_header(path)  # raises ShardError naming the file if the download is bad
    return "downloaded"


def parse_args(argv=None):
    """Command-line arguments: number of train shards and target directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("num_train", type=int,
                        help=f"number of 100M-token train shards, 1..{MAX_TRAIN_SHARDS}")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="download directory")
    args = parser.parse_args(argv)
    if not 1 <= args.num_train <= MAX_TRAIN_SHARDS:
        parser.error(f"num_train must be in 1..{MAX_TRAIN_SHARDS}, got {args.num_train}")
    return args


def main(argv=None):
    """Download the validation shard and the requested train shards."""
    args = parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    names = shard_names(args.num_train)
    for i, name in enumerate(names, start=1):
        print(f"[{i}/{len(names)}] {name}", flush=True)
        if fetch(name, args.dir) == "present":
            print("  already present, skipped", flush=True)
    print(f"done: {len(names)} files in {args.dir}")


if __name__ == "__main__":
    main()
