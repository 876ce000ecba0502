#!/usr/bin/env bash
# The translation acceptance runs: English -> French and English -> Korean software messages
# (../shared/data/translation), 5% test split by seed 0, BPE 4000 on both sides, 12 minutes of
# training and evaluation each, one thread per run (two side by side on the 2-core machine).
# Each job prints the test table (copy, retrieval, rnnkit greedy, rnnkit beam 5).
set -euo pipefail
DATA=${DATA:-../shared/data/translation}
OUT=${OUT:-runs/translate}
mkdir -p "$(dirname "$OUT")"
for L in fr ko; do
  OMP_NUM_THREADS=1 rnnkit train translate --data "$DATA/en-$L.tsv" --out "$OUT/en-$L" \
    --src-tokenizer bpe --tgt-tokenizer bpe --src-vocab-size 4000 --tgt-vocab-size 4000 \
    --minutes 12 --eval-every 150 --eval-sentences 200 > "$OUT-en-$L.log" 2>&1 &
done
wait
tail -n 20 "$OUT"-en-*.log
