"""The record's own training script and ours on the same GPU, the same shards, the same tokens per GPU
per step and the same number of steps: both ms/step and their ratio.

    python3 -m scripts.gpu.side_by_side \\
        --record-log modded-nanogpt/records/track_1_short/2025-01-26_BatchSize/0bdd5ee9-ac28-4202-bdf1-c906b102b0ec.txt
    python3 -m scripts.gpu.side_by_side --record-log LOG --steps 200 --out side_by_side.json
    python3 -m scripts.gpu.side_by_side --record-log LOG --train-files 'data/fineweb10B/fineweb_train_00000[1-2].bin' \\
        --val-files 'data/fineweb10B/fineweb_val_*.bin'

The record's code is never part of this repository. A modded-nanogpt record log begins with the full
source of the script that produced it, then a line of 100 '=', then the environment and the log
lines; this script cuts the source out of the given log into a temporary folder (outside the
repository, removed at the end; `--keep-dir` keeps it elsewhere) and runs it there with
`torchrun --standalone --nproc_per_node=1`. Its settings are constants of its `Hyperparameters`; a few
are patched at run time, each by a regular expression that must match exactly one assignment (a
record with another layout fails here, naming the constant, rather than running something else):

    train_files, val_files   "data/train_*.bin", "data/val_*.bin": the shards of this comparison, in the
                             temporary folder (the record globs them from its working directory)
    num_iterations           --steps (its lr and window schedules follow the shortened run, as ours do)
    val_loss_every           0: validate only after the last step (no pause at step 0 and every 125)
    val_tokens               one validation batch (val_seq_len tokens on one GPU), kept a multiple of it

Tokens per GPU per step: the record's ranks each take its `seq_len` (or `train_seq_len`) tokens per
step (48*1024 in the 2025-01-26 record, 8 x 48Ki on 8 GPUs), so on one GPU it trains on seq_len
tokens per step with nothing patched; ours runs on the same GPU with data.batch_tokens = seq_len.
Both read the same files: the config's FineWeb shards when they exist (or --train-files/--val-files),
else synthetic Markov-chain shards with FineWeb-like documents (data/synthetic.py), linked into the
temporary folder. Both print speedrun lines `step:N/M ... train_time:Tms step_avg:Ams`, where step_avg
leaves out the first 10 steps (compilation) in both (ours when it ran more than 20: --steps must be
above 20); the figure is each run's last such line (the one
after the final validation, taken after a device synchronization in both). The record goes first,
then ours; each has `--timeout-s`. Writes JSON (the patched constants' old and new values, never the
record's code) and prints both ms/step and ours/record. Exit code: 0 both measured, 1 otherwise, 2 a
log that is not a record log or whose constants cannot be patched, 77 no CUDA device.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_json
from common.paths import REPO
from scripts.gpu.running import EXIT_NO_GPU, cuda_available, exit_on_sigterm, no_gpu_message, run_logged, tail

SEPARATOR = "=" * 100  # the record prints its code, then this line
SCRIPT_NAME = "record_train_gpt.py"
SHARDS = "data"  # the shards' folder inside the working folder (the record's cwd)
TRAIN_GLOB, VAL_GLOB = f"{SHARDS}/train_*.bin", f"{SHARDS}/val_*.bin"
SEQ_LEN_NAMES = ("train_seq_len", "seq_len")  # later records renamed it
STEP_LINE = re.compile(r"^step:(\d+)/(\d+)\b.*?\btrain_time:([0-9.]+)ms\s+step_avg:([0-9.]+|nan)ms", re.M)


class RecordError(ValueError):
    """The log is not a record log, or its script's constants cannot be read or patched."""


# ----------------------------------------------------------------------------------------------
# the record's script


def extract_script(log_text: str, where: str = "the record log") -> str:
    """The source at the head of a record log: everything before the first line of 100 '='."""
    lines = log_text.splitlines(keepends=True)
    try:
        end = next(i for i, line in enumerate(lines) if line.rstrip("\r\n") == SEPARATOR)
    except StopIteration:
        raise RecordError(f"{where}: no line of 100 '=' after the script; not a modded-nanogpt record log") from None
    source = "".join(lines[:end])
    try:
        compile(source, SCRIPT_NAME, "exec")
    except SyntaxError as e:
        raise RecordError(f"{where}: the text before the first line of 100 '=' is not Python ({e})") from None
    return source


def _assignment(name: str) -> re.Pattern:
    """`<indent>name = value  # comment` on one line; group 1: up to the value, 2: the value."""
    return re.compile(rf"^([ \t]*{re.escape(name)}[ \t]*(?::[^=\n]+)?=[ \t]*)([^#\n]*?)[ \t]*(?:#.*)?$", re.M)


def _only_match(source: str, name: str) -> re.Match:
    found = list(_assignment(name).finditer(source))
    if len(found) != 1:
        raise RecordError(f"the record script assigns `{name} = ...` {len(found)} times (expected exactly once "
                          f"in its Hyperparameters); its layout differs from the 2025-01-26 record's")
    return found[0]


def _int_value(text: str, name: str) -> int:
    """An integer written as a constant expression (48*1024, 10485760, 4*64*1024)."""
    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add, ast.Sub, ast.Pow, ast.FloorDiv)):
            ops = {ast.Mult: int.__mul__, ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Pow: int.__pow__,
                   ast.FloorDiv: int.__floordiv__}
            return ops[type(node.op)](value(node.left), value(node.right))
        raise RecordError(f"the record script's `{name} = {text}` is not an integer constant expression")
    try:
        return value(ast.parse(text, mode="eval").body)
    except SyntaxError:
        raise RecordError(f"the record script's `{name} = {text}` is not an integer constant expression") from None


@dataclass(frozen=True)
class RecordConstants:
    seq_len: int  # training tokens per GPU per step
    val_seq_len: int  # validation tokens per GPU per step
    num_iterations: int
    val_tokens: int


def read_constants(source: str) -> RecordConstants:
    names = [n for n in SEQ_LEN_NAMES if _assignment(n).search(source)]
    if not names:
        raise RecordError(f"the record script assigns none of {', '.join(SEQ_LEN_NAMES)} (its tokens per GPU)")
    get = {n: _int_value(_only_match(source, n).group(2), n) for n in (names[0], "val_seq_len", "num_iterations",
                                                                         "val_tokens")}
    return RecordConstants(get[names[0]], get["val_seq_len"], get["num_iterations"], get["val_tokens"])


def patch_script(source: str, steps: int, val_tokens: int) -> tuple[str, list[dict]]:
    """The script with its data, length and validation constants replaced (module docstring); returns it
    and, per constant, its old and new value."""
    new_values = {"train_files": json.dumps(TRAIN_GLOB), "val_files": json.dumps(VAL_GLOB),
                  "num_iterations": str(steps), "val_loss_every": "0", "val_tokens": str(val_tokens)}
    changes = []
    for name, value in new_values.items():
        match = _only_match(source, name)
        changes.append({"constant": name, "was": match.group(2), "now": value})
        source = source[:match.start(2)] + value + source[match.end(2):]
    compile(source, SCRIPT_NAME, "exec")
    return source, changes


# ----------------------------------------------------------------------------------------------
# shards, commands, outputs


def needed_tokens(steps: int, tokens_per_step: int, val_tokens: int) -> tuple[int, int]:
    """Train and validation tokens both runs need (the record moves to the next shard, or fails, when
    fewer than a batch + 1 tokens are left; ours reads seq_len + 1 per row)."""
    return (steps + 4) * (tokens_per_step + 1), val_tokens + 1024


def prepare_shards(folder: Path, cfg, args, steps: int, tokens: int, val_tokens: int) -> dict:
    """Link the shards of this comparison into folder/data as train_NNNNNN.bin / val_NNNNNN.bin: the
    given files, else the config's (when they exist), else synthetic ones written there."""
    shards = folder / SHARDS
    shards.mkdir(parents=True)
    train_pattern = args.train_files or (None if cfg.data.synthetic else _from_repo(cfg.data.train_files))
    val_pattern = args.val_files or (None if cfg.data.synthetic else _from_repo(cfg.data.val_files))
    train, val = sorted(glob.glob(train_pattern or "")), sorted(glob.glob(val_pattern or ""))
    if args.train_files or args.val_files:
        if not (train and val):
            raise RecordError(f"--train-files {args.train_files!r} / --val-files {args.val_files!r} match no files")
    if not (train and val):
        from data.synthetic import make_synthetic_shards

        train_tokens, val_count = needed_tokens(steps, tokens, val_tokens)
        train_pattern, val_pattern = make_synthetic_shards(
            str(folder / "synthetic"), vocab_size=cfg.model.vocab_size, eot_token=cfg.model.eot_token,
            train_tokens=train_tokens, val_tokens=val_count, num_train_shards=1)
        train, val, source = sorted(glob.glob(train_pattern)), sorted(glob.glob(val_pattern)), "synthetic"
    else:
        source = "files"
    for kind, files in (("train", train), ("val", val)):
        for i, path in enumerate(files):
            (shards / f"{kind}_{i:06d}.bin").symlink_to(Path(path).resolve())
    return {"source": source, "train_files": train, "val_files": val}


def _from_repo(pattern: str) -> str:
    return pattern if Path(pattern).is_absolute() else str(REPO / pattern)


def record_command(python: str) -> list[str]:
    """The record reads RANK, WORLD_SIZE and LOCAL_RANK: one process under torchrun, in its folder."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", SCRIPT_NAME]


def our_command(python: str, config: str, folder: Path, tokens: int, steps: int, val_tokens: int, val_seq_len: int,
                overrides: list[str]) -> list[str]:
    """Ours on one GPU: the record's tokens per step, steps, validation and shards; `overrides` last."""
    return [python, str(REPO / "train_gpt.py"), "--config", config, f"--data.batch_tokens={tokens}",
            f"--schedule.steps={steps}", f"--data.train_files={folder / TRAIN_GLOB}",
            f"--data.val_files={folder / VAL_GLOB}", "--data.synthetic=false", "--eval.every=0",
            f"--eval.tokens={val_tokens}", f"--eval.seq_len={val_seq_len}", "--log.every=10",
            f"--log.dir={folder / 'runs'}", "--log.run_id=ours", "--checkpoint.every=0", "--checkpoint.final=false",
            *overrides]


def parse_step_avg(text: str) -> dict | None:
    """The last speedrun line with a finite step_avg: {step, steps, train_time_ms, step_avg_ms}."""
    found = [m for m in STEP_LINE.finditer(text) if m.group(4) != "nan"]
    if not found:
        return None
    step, steps, train_time, avg = found[-1].groups()
    return {"step": int(step), "steps": int(steps), "train_time_ms": float(train_time), "step_avg_ms": float(avg)}


def measured(name: str, done, output: str) -> dict:
    """One run's figure from its output, or why there is none."""
    line = parse_step_avg(output)
    run = {"returncode": done.returncode, "timed_out": done.timed_out, "seconds": round(done.seconds, 1),
           **(line or {"step_avg_ms": None}), "output_tail": tail(output, 30)}
    if done.timed_out:
        run["error"] = f"{name} was killed at --timeout-s after {done.seconds:.0f} s"
    elif done.returncode != 0:
        run["error"] = f"{name} exited with code {done.returncode}"
    elif line is None or line["step"] != line["steps"]:
        run["error"] = f"{name} printed no final step line with a step_avg"
    if run.get("error"):  # a partial figure is not the figure
        run["partial_step_avg_ms"], run["step_avg_ms"] = run["step_avg_ms"], None
    return run


# ----------------------------------------------------------------------------------------------
# the command line


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record-log", required=True, help="a modded-nanogpt record log (records/<...>/<id>.txt)")
    parser.add_argument("--config", default=str(REPO / "configs/speedrun_124m.toml"), help="our side")
    parser.add_argument("--steps", type=int, default=100, help="steps of each run (both exclude the first 10)")
    parser.add_argument("--train-files", help="glob of training shards for both (default: the config's, "
                                              "else synthetic)")
    parser.add_argument("--val-files", help="glob of validation shards for both")
    parser.add_argument("--timeout-s", type=float, default=600, help="each run's time limit")
    parser.add_argument("--keep-dir", help="keep the working folder (the record's extracted script, both outputs) "
                                            "here; must be outside the repository")
    parser.add_argument("--out", default="side_by_side.json")
    args, overrides = parser.parse_known_args(argv)
    if args.steps <= 20:  # the record leaves out its first 10 steps from step 12 on, ours when it ran > 20
        parser.error("--steps must be above 20: only then do both runs leave their first 10 steps out of step_avg")
    if args.keep_dir and Path(args.keep_dir).resolve().is_relative_to(REPO):
        parser.error(f"--keep-dir {args.keep_dir} is inside the repository; the record's code never goes there")
    if args.keep_dir and Path(args.keep_dir).exists() and any(Path(args.keep_dir).iterdir()):
        parser.error(f"--keep-dir {args.keep_dir} is not empty")
    bad = [o for o in overrides if not o.startswith("--") or "." not in o.split("=")[0]]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (our config overrides look like --section.key=value)")
    return args, overrides


def prepare(args, overrides: list[str], folder: Path) -> dict:
    """The record's patched script in `folder`, the shards, and both commands."""
    from training.config import load_config

    source = extract_script(Path(args.record_log).read_text(errors="replace"), args.record_log)
    constants = read_constants(source)
    val_tokens = constants.val_seq_len  # one validation batch on one GPU
    patched, changes = patch_script(source, args.steps, val_tokens)
    (folder / SCRIPT_NAME).write_text(patched)
    cfg = load_config(args.config, overrides)
    shards = prepare_shards(folder, cfg, args, args.steps, constants.seq_len, val_tokens)
    ours = our_command(sys.executable, args.config, folder, constants.seq_len, args.steps, val_tokens,
                       constants.val_seq_len, overrides)
    return {"constants": constants.__dict__, "patches": changes, "shards": shards,
            "commands": {"record": record_command(sys.executable), "ours": ours}}


def compare(args, overrides: list[str], folder: Path) -> dict:
    plan = prepare(args, overrides, folder)
    runs = {}
    for name, cwd in (("record", folder), ("ours", REPO)):
        log = folder / f"{name}.out.txt"
        print(f"[side_by_side] {name}: {' '.join(plan['commands'][name])}", flush=True)
        done = run_logged(plan["commands"][name], log, args.timeout_s, cwd=cwd)
        runs[name] = measured(name, done, log.read_text(errors="replace"))
    rec, ours = runs["record"]["step_avg_ms"], runs["ours"]["step_avg_ms"]
    return {"record_log": str(Path(args.record_log).resolve()), "config": args.config, "overrides": overrides,
            "steps": args.steps, "tokens_per_gpu": plan["constants"]["seq_len"], **plan, **runs,
            "ratio": ours / rec if rec and ours is not None else None}


def report(result: dict) -> str:
    def ms(run):
        return f"{run['step_avg_ms']:9.2f}" if run["step_avg_ms"] is not None else f"{'failed':>9}"

    ratio = result["ratio"]
    lines = [f"{result['steps']} steps of {result['tokens_per_gpu']:,} tokens on one GPU, "
             f"{result['shards']['source']} shards",
             f"record script  {ms(result['record'])} ms/step",
             f"ours           {ms(result['ours'])} ms/step",
             f"ours / record  {'n/a' if ratio is None or math.isnan(ratio) else f'{ratio:9.3f}'}   (target <= 1.00)"]
    lines += [f"{name}: {result[name]['error']}" for name in ("record", "ours") if result[name].get("error")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(argv)
    if not cuda_available():
        print(no_gpu_message("side_by_side"), file=sys.stderr)
        return EXIT_NO_GPU
    exit_on_sigterm()  # a time limit from outside also stops the run in progress
    folder = Path(args.keep_dir) if args.keep_dir else Path(tempfile.mkdtemp(prefix="side_by_side_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = compare(args, overrides, folder)
    except RecordError as e:
        print(f"side_by_side: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_dir:
            shutil.rmtree(folder, ignore_errors=True)
    atomic_write_json(args.out, result)
    print(report(result))
    print(f"wrote {args.out}")
    return 0 if result["ratio"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
