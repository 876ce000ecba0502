"""The README's emoji table from the acceptance runs' metrics.json (test split):

    python docs/caption/emoji_table.py runs/caption
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: str) -> None:
    print("| lang | system (emoji, test, 379 images) | chrF | BLEU | exact | steps, minutes |")
    print("|---|---|---|---|---|---|")
    for lang in ("en", "ko"):
        base: dict = {}
        rows = []
        for dec in ("show-tell", "attend"):
            f = Path(out) / f"{lang}-{dec}" / "metrics.json"
            if not f.exists():
                continue
            m = json.loads(f.read_text())
            how = f"{m['steps']:,} (best {m['best_step']:,}), {m['train_seconds'] / 60:.1f}"
            for k, v in m["systems"].items():
                if k.startswith(("most", "nearest")):
                    base.setdefault(k, v)
                else:
                    rows.append((k, v, how))
        for k, v, how in [(k, v, "–") for k, v in base.items()] + rows:
            print(f"| {lang} | {k} | {v['chrf']:.1f} | {v['bleu']:.1f} | {v['exact']:.3f} "
                  f"| {how} |")


if __name__ == "__main__":
    main(sys.argv[1])
