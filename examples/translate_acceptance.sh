#!/usr/bin/env bash
# The translation acceptance runs: English -> French and English -> Korean software messages
# (../shared/data/translation), 5% test split by seed 0, MINUTES (default 14) of training and
# evaluation each on the 2 cores: one language after the other (LANGS, default "fr ko"), each
# as RANKS (default 2) torchrun processes of one thread (DDP, gloo), the whole under one lock
# (CPU_LOCK, default $TMPDIR/rnnkit-cpu.lock) so no other timed job overlaps it. Targets are
# BPE 4000 for French, characters (Hangul syllables) for Korean; with --fuzzy the sources are
# read with the target tokenizer (--copy-source), plain runs read them as BPE 4000. Each job
# prints the test table (copy, retrieval, rnnkit greedy, rnnkit beam 5). EXTRA: more flags for
# every run (e.g. EXTRA=--no-input-feed).
#   examples/translate_acceptance.sh fuzzy   # translation memory, copying from it and the source
#   examples/translate_acceptance.sh plain   # the plain encoder-decoder
set -euo pipefail
MODE=${1:-fuzzy}
case $MODE in fuzzy) FLAG="--fuzzy --copy-source" ;; plain) FLAG=--no-fuzzy ;;
  *) echo "usage: translate_acceptance.sh fuzzy|plain" >&2; exit 2 ;; esac
DATA=${DATA:-../shared/data/translation}
OUT=${OUT:-runs/translate}
MINUTES=${MINUTES:-14}
RANKS=${RANKS:-2}
PY=${PY:-python}
mkdir -p "$OUT"
exec 9>"${CPU_LOCK:-${TMPDIR:-/tmp}/rnnkit-cpu.lock}"
flock 9
for L in ${LANGS:-fr ko}; do
  case $L in
    ko) TGT=(--tgt-tokenizer char) ;;
    *) TGT=(--tgt-tokenizer bpe --tgt-vocab-size 4000) ;;
  esac
  $PY -m torch.distributed.run --standalone --nproc-per-node "$RANKS" -m rnnkit.cli \
    train translate --data "$DATA/en-$L.tsv" --out "$OUT/en-$L-$MODE" --restart $FLAG \
    --src-tokenizer bpe --src-vocab-size 4000 "${TGT[@]}" \
    --dropout 0.1 ${EXTRA:-} --threads 1 --epochs 1000 --minutes "$MINUTES" --eval-every 200 \
    --eval-sentences 200 > "$OUT/en-$L-$MODE.log" 2>&1
  tail -n 14 "$OUT/en-$L-$MODE.log"
done
