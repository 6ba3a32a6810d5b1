#!/usr/bin/env bash
# The whole prepared run on a borrowed GPU: one H100/H200, nothing installed, no network, one command of
# at most 9 minutes that writes everything it measured under OUT (3 files: an archive, the check's JSON
# and its table).
#
#   bash scripts/gpu/first_run.sh OUT            # ns, step, step_group, train, tests (scripts/gpu/check.py)
#   bash scripts/gpu/first_run.sh OUT record     # a second command: the record's script side by side (~5 min)
#   bash scripts/gpu/first_run.sh OUT lipschitz  # the thesis's Lipschitz transformer, full size
#                                                # (configs/lipschitz_thesis.toml, ~3 min estimated; needs data/shakespeare_char)
#   bash scripts/gpu/first_run.sh OUT benchmark  # the optimizer benchmark packed onto the GPU for 9 minutes
#                                                # (configs/benchmarks/gpu_shakespeare_packed.toml; needs data/shakespeare_char);
#                                                # resumable: unpack OUT/gpu_benchmark.tar.gz into sweeps/ and carry
#                                                # sweeps/gpu_shakespeare_packed to the next lease
#
# Before the lease, on the CPU machine (the borrowed one can download nothing):
#   python3 -m data.shakespeare               # data/shakespeare_char/: real text for the train stage (~10 MB,
#                                             # git-ignored; it travels when the lease carries it)
#   For `record`: the record's log (its script is inside it) as upstream/record.txt (git-ignored, never
#   committed), e.g. from a fetched copy of KellerJordan/modded-nanogpt:
#     git --git-dir=<the fetched copy> show HEAD:records/track_1_short/2025-01-26_BatchSize/<id>.txt > upstream/record.txt
#   (docs/benchmarks.md, "GPU check", names the log and says how).
# On the lease: run `bash scripts/gpu/first_run.sh $OUT` carrying data/shakespeare_char (and upstream for
# `record`), with a time limit of 600 s.
# Afterwards, here: tar xzf <returned>/gpu_check.tar.gz -C records/gpu/   (a folder <date>_<device>), commit it,
# and put the figures in the README's GPU section.
set -uo pipefail
OUT=$(realpath -m "${1:?usage: bash scripts/gpu/first_run.sh OUT_DIR [record]}")
WHAT=${2:-check}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" 2>&1
  ls -l data/shakespeare_char 2>&1 | head -5
} | tee "$OUT/environment.txt"

case "$WHAT" in
  check)
    "$PY" -m scripts.gpu.check --time-limit-s "${TIME_LIMIT_S:-540}" --archive "$OUT/gpu_check.tar.gz" 2>&1 | tee "$OUT/gpu_check.txt"
    ;;
  record)
    LOG=${RECORD_LOG:-upstream/record.txt}
    [ -f "$LOG" ] || { echo "no record log at $LOG (see the head of this script)"; exit 2; }
    "$PY" -m scripts.gpu.check --stages record --record-log "$LOG" --time-limit-s "${TIME_LIMIT_S:-540}" \
      --budget record="${TIME_LIMIT_S:-540}" --archive "$OUT/gpu_record.tar.gz" 2>&1 | tee "$OUT/gpu_record.txt"
    ;;
  lipschitz)
    timeout "${TIME_LIMIT_S:-540}" "$PY" train_gpt.py --config configs/lipschitz_thesis.toml --log.dir="$OUT/runs" \
      --log.run_id=lipschitz_thesis --checkpoint.final=false 2>&1 | tee "$OUT/lipschitz_thesis.txt"
    tar czf "$OUT/lipschitz_thesis.tar.gz" -C "$OUT/runs" lipschitz_thesis && rm -rf "$OUT/runs"
    ;;
  benchmark)
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 77)" \
      || { echo "no CUDA device: the packed benchmark is for a GPU (on a CPU: configs/benchmarks/cpu_shakespeare.toml)"; exit 77; }
    timeout "${TIME_LIMIT_S:-540}" "$PY" -m scripts.studies.benchmark --spec configs/benchmarks/gpu_shakespeare_packed.toml \
      --gpus 0 2>&1 | tee "$OUT/gpu_benchmark.txt"
    tar czf "$OUT/gpu_benchmark.tar.gz" --exclude='*.pt' -C sweeps gpu_shakespeare_packed
    ;;
  *)
    echo "unknown run '$WHAT': check (default), record, lipschitz or benchmark"; exit 2
    ;;
esac
