"""[data]: which shards a run reads (or the synthetic ones it writes), and how many tokens a step takes."""

from __future__ import annotations

from dataclasses import dataclass

from common.config_io import check as _check


@dataclass(frozen=True)
class DataConfig:
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"  # glob of the training shards (from here, else the repo)
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"  # glob of the validation shards
    batch_tokens: int = 8 * 48 * 1024  # global tokens per optimizer step, all ranks together
    micro_batch_size: int = 1  # rows per rank per forward/backward
    align_to_docs: bool = False  # start every row at a document start
    shuffle_shards: bool = False  # visit the training shards in a new random order every epoch
    synthetic: bool = False  # generate learnable synthetic shards into `synthetic_dir` on first use
    synthetic_dir: str = "data/synthetic"  # shards go to a subfolder named after their parameters
    synthetic_seed: int = 0  # the Markov chain and its samples (independent of the training seed)
    synthetic_train_tokens: int = 4_000_000  # tokens of the synthetic training shards ...
    synthetic_val_tokens: int = 262_144  # ... and of the validation shard (at least eval.tokens + 1)

    def check(self, config_name: str = "") -> None:
        """ConfigError for a data setting that cannot run (batch sizes against the ranks: training/config.py)."""
        _check(self.micro_batch_size > 0, f"data.micro_batch_size must be positive, got {self.micro_batch_size}")
        if self.synthetic:
            for key in ("train_files", "val_files"):  # naming files means using them: never a silent substitution
                value = getattr(self, key)
                _check(value == getattr(DataConfig, key),
                       f"data.{key} = {value!r} names data files, but data.synthetic = true (set by the config"
                       f"{' ' + repr(config_name) if config_name else ''}) would train on generated synthetic shards "
                       f"instead: add --data.synthetic=false to train on these files")
