#!/usr/bin/env bash
# The acceptance runs of rnnkit's text classifier (README, "Text classification").
# Usage: examples/classify_acceptance.sh [sms|nsmc-compare|nsmc] ...   (default: all three)
# Data: ../shared/data (not part of the repository). Runs go to runs/clf/.
# OMP_NUM_THREADS=1: on a busy 2-core machine, two OpenMP threads spin against other jobs and
# run ~5x slower; one thread per run is the faster choice there.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RNNKIT=${RNNKIT:-.venv/bin/rnnkit}
mkdir -p runs/clf

sms() {  # SMS spam: stratified 20% test, char GRU, max pooling
  $RNNKIT train classify --data "$DATA/sms_spam.tsv" --test-fraction 0.2 --tokenizer char \
    --cell gru --hidden 128 --embed 64 --pool max --batch-size 32 --epochs 12 --minutes 9 \
    --out runs/clf/sms_char
}

nsmc_run() {  # NAME TOKENIZER MINUTES [extra flags]: 40,000 train (10% of it validation) /
  local name=$1 tok=$2 min=$3; shift 3  # 10,000 test, the split fixed by --split-seed 0
  $RNNKIT train classify --data "$DATA/nsmc/ratings_test.txt" --test-fraction 0.2 \
    --split-seed 0 --tokenizer "$tok" --cell gru --hidden 256 --embed 128 --pool max \
    --batch-size 64 --minutes "$min" --epochs 8 --max-len 200 "$@" --out "runs/clf/$name"
}

nsmc_compare() {  # the tokenizer comparison, 5 minutes each (at most; 8 epochs stop it first)
  nsmc_run nsmc_char5 char 5 --min-freq 2
  nsmc_run nsmc_jamo5 jamo 5 --min-freq 2
  nsmc_run nsmc_bpe5 bpe 5 --vocab-size 8000
}

for job in "${@:-sms nsmc_compare nsmc}"; do
  for j in $job; do
    case $j in
      sms) sms ;;
      nsmc_compare|nsmc-compare) nsmc_compare ;;
      nsmc) nsmc_run nsmc_char char 14 --min-freq 2 ;;  # the best of the comparison
      *) echo "unknown job $j" >&2; exit 2 ;;
    esac
  done
done
