#!/usr/bin/env bash
# The README's long commands, exactly as the README writes them: the install, the acceptance
# runs and benchmarks that take minutes (the language model's 4-minute default and what uses
# its run, Tiny Shakespeare, the moving-digits video classifier, the PM2.5 forecaster, the n-gram/RNN/GRU/LSTM table, the kernel,
# busy-machine, seq2seq and serving benchmarks) and the server. Every other README command is run by
# tests/test_readme.py, which also checks that each README command it does not run stands
# here, verbatim (a server line may end in " &").
# Usage: examples/readme_long.sh [install|lm|sequences|forecast|caption|bench|serve] ...
#        (default: all but install)
# Run from anywhere; it works in the project root, with rnnkit on PATH (after the install)
# and the shared data in ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."

install() {  # the README's first two commands (a fresh .venv)
  python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/rnnkit explain lstm
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest -q
}

lm() {  # "Character language model": the default run and what uses it, ~35 minutes
  rnnkit train lm --out runs/lm
  rnnkit sample runs/lm --prime "def " --length 500 --temperature 0.8 --top-k 20
  rnnkit eval runs/lm --data src/rnnkit/train.py
  rnnkit train lm --resume runs/lm
  rnnkit train lm --data ../shared/data/nsmc/ratings_test.txt --tokenizer jamo --cell gru
  rnnkit train lm --cell ngram --order 9
  torchrun --nproc-per-node 2 -m rnnkit.cli train lm --out runs/ddp
  rnnkit export runs/lm --onnx lm.onnx --step step.onnx
  rnnkit train lm --data ../shared/data/tinyshakespeare.txt --minutes 10 --dropout 0.25 --eval-every 250
}

sequences() {  # "Sequences of vectors and video frames": the video set, ~2 minutes
  rnnkit train sequences --data moving-digits
}

forecast() {  # "Forecasting time series": Beijing PM2.5, 8 minutes of training
  local data=../shared/data/timeseries/pollution.csv
  rnnkit train forecast --data ../shared/data/timeseries/pollution.csv --target pm2.5 \
    --lookback 72 --horizon 24 --cell rnn --dropout 0.3 --weight-decay 0.05 --minutes 8 \
    --out runs/pm25
  { head -n 1 $data; tail -n 200 $data; } > recent.csv
  rnnkit forecast runs/pm25 --data recent.csv
  rnnkit eval runs/pm25
}

bench() {  # the benchmarks, ~25 minutes
  python bench/lm_compare.py
  python bench/kernels.py
  python bench/kernels.py --only bf16
  python bench/stream.py
  python bench/busy.py
  python bench/seq2seq_bench.py
  python bench/serve_bench.py --out bench/results/serve.json
}

caption() {  # "Image captioning", the emoji set: 2 pairs of runs (12 + 10 minutes) and the table
  MINUTES=12 examples/caption_acceptance.sh show-tell  # en and ko side by side, 1 thread each
  MINUTES=10 examples/caption_acceptance.sh attend
  python docs/caption/emoji_table.py runs/caption      # the table below
  python docs/caption/emoji_grid.py runs/caption/en-show-tell docs/caption/emoji_show_tell_captions.png
  python docs/caption/emoji_grid.py runs/caption/en-attend docs/caption/emoji_attend_captions.png
  python docs/caption/emoji_grid.py runs/caption/ko-show-tell docs/caption/emoji_ko_show_tell_captions.png
}

serve() {  # "Serving live scores": the server (needs runs/lm from lm) and the requests
  [ -d runs/clf/sms_char ] || examples/classify_acceptance.sh sms
  rnnkit serve sms=runs/clf/sms_char lm=runs/lm --port 8000 &
  local pid=$!
  trap 'kill $pid' EXIT
  until curl -sf localhost:8000/healthz > /dev/null; do sleep 1; done
  curl -s localhost:8000/v1/sms/predict -d '{"texts": ["Are we still on for lunch?"]}'
  sid=$(curl -s -X POST localhost:8000/v1/sms/sessions | jq -r .session)
  curl -s localhost:8000/v1/sessions/$sid/feed -d '{"text": "hello, this is your bank"}'
}

for job in "${@:-lm sequences forecast caption bench serve}"; do
  for j in $job; do
    case $j in
      install|lm|sequences|forecast|caption|bench|serve) $j ;;
      *) echo "unknown job $j (install, lm, sequences, forecast, caption, bench, serve)" >&2
         exit 2 ;;
    esac
  done
done
