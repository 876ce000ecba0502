#!/usr/bin/env bash
# The acceptance runs of rnnkit's sequence classifier (README, "Sequences of vectors and video
# frames"). Usage: examples/sequences_acceptance.sh [basicmotions|japanesevowels|moving-digits]
# (default: all). Needs sktime (pip install -e '.[sequences]'); no downloads. Runs: runs/seq/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RNNKIT=${RNNKIT:-.venv/bin/rnnkit}
mkdir -p runs/seq

basicmotions() {  # the (20, 6) example: 20-step windows of 6 channels, LSTM(64)
  $RNNKIT train sequences --data basicmotions --window 20 --stride 10 --cell lstm --hidden 64 \
    --batch-size 16 --epochs 40 --out runs/seq/basicmotions
}
japanesevowels() {  # ragged 7-29 steps of 12 channels, kept ragged
  $RNNKIT train sequences --data japanesevowels --bidirectional --hidden 128 --batch-size 16 \
    --epochs 60 --out runs/seq/japanesevowels
}
moving_digits() {  # 10 frames of 32x32, per-frame CNN then GRU(64)
  $RNNKIT train sequences --data moving-digits --epochs 8 --out runs/seq/moving-digits
}

for job in "${@:-basicmotions japanesevowels moving-digits}"; do
  for j in $job; do "${j//-/_}"; done
done
