"""A character language model from Python: the same pieces `rnnkit train lm` uses.

    python examples/char_lm.py [TEXT_FILE]     # default: the Python standard library, 1 minute
"""

import sys
import time

from rnnkit.tasks.lm import LMTask, generate, load_data, load_run
from rnnkit.train import TrainConfig, train

source = {"data": sys.argv[1] if len(sys.argv) > 1 else None, "max_chars": 1_000_000,
          "valid_fraction": 0.1}
data = load_data(source, tokenizer="char")  # split by file (or last 10% of one file)
task = LMTask(data, {"cell": "lstm", "hidden": 256, "layers": 1, "embed": 64, "dropout": 0.0,
                     "tie": False}, batch=32, seq=100)
out = f"runs/example-lm-{time.strftime('%Y%m%d-%H%M%S')}"
# an evaluation reads every validation character (751k, a few seconds): not too often
result = train(task, TrainConfig(out=out, minutes=1.0, eval_every=500))
print(f"validation: {result.best['bpc']:.3f} bits/char")

model, tokenizer, _ = load_run(out)  # best/ checkpoint: safetensors + JSON
for piece in generate(model, tokenizer, prime="def ", length=300, temperature=0.8):
    print(piece, end="", flush=True)
print()
