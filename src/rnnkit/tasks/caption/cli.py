"""The captioner's command line: ``rnnkit train caption``, ``rnnkit caption RUN IMAGE...``,
``rnnkit eval RUN``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rnnkit import checkpoint as ckpt
from rnnkit.seq2seq import DECODER_CELLS
from rnnkit.tasks.args import (
    BEAM,
    NONNEG_INT,
    PENALTY,
    POS_INT,
    WIDTH,
    add_split_args,
    number,
    pick,
)
from rnnkit.tasks.caption.api import ImageCaptioner, load
from rnnkit.tasks.caption.data import read_folder
from rnnkit.tasks.caption.metrics import baselines, caption_scores
from rnnkit.tasks.caption.model import DECODERS
from rnnkit.tasks.caption.task import CaptionTask, load_split
from rnnkit.tasks.spec import record_split, task_spec, tell, verb
from rnnkit.train import TrainResult

DESCRIPTION = """Train an image captioner: a small CNN written in rnnkit (no pretrained
weights) turns the image into a grid of features, and the encoder-decoder's decoder (the same
one and the same beam search as rnnkit train translate) writes the caption word by word.
--decoder show-tell: the image vector is the decoder's initial state (Vinyals et al. 2015,
the cs231n form); attend: attention over the grid positions at every word (Xu et al. 2015).
--data names a folder of images with captions.tsv (file<TAB>caption, several lines per image
allowed; PNG read with matplotlib; grayscale and RGBA converted; other sizes resized to
--image-size; unusable lines skipped and counted); --data emoji: every emoji the Noto Color
Emoji font (Debian fonts-noto-color-emoji) draws, rendered with Pillow at 32x32 (or
--image-size) and captioned with its CLDR short name from the emoji package (pip install
emoji) in --lang en or ko, e.g. "woman cook medium skin tone" (written by people; rendered
once, cached in ~/.cache/rnnkit/emoji); without --data, the built-in digits set: strips of
1-5 handwritten scikit-learn digits captioned with their names ("three seven one",
generated from the labels). The split is by image (--test-fraction, --valid-fraction by
--split-seed), recorded in split.json; the best checkpoint is kept by validation chrF. The
job ends with chrF, BLEU (sacrebleu) and exact match of greedy and beam captions of the test
images beside two baselines on the same split: the most common training caption, and the
caption of the training image nearest in pixels; and a picture grid (captions.png)."""

DEFAULTS: dict[str, Any] = {
    "epochs": 15, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.0, "warmup": 50,
    "clip": 1.0, "log_every": 20, "seed": 0, "device": "auto",
    "cell": "lstm", "hidden": 128, "layers": 1, "embed": 64, "dropout": 0.1,
    "best_metric": "chrf", "best_mode": "max",
}
OWN: dict[str, Any] = {
    "data_size": 3000, "image_size": None, "test_fraction": 0.1, "valid_fraction": 0.05,
    "split_seed": 0, "min_freq": 1, "max_len": 20, "decoder": "attend",
    "channels": "32,64,128", "image_vector": 256, "lang": "en", "eval_images": 300, "beam": 5,
    "alpha": 0.0, "feature_norm": None, "bridge_act": "linear",
}
SETTINGS = ("data", *OWN)
MODEL_KEYS = ("cell", "embed", "hidden", "layers", "dropout")


def channels(s: str) -> list[int]:
    try:
        c = [int(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel counts such as "
                                         f"32,64,128, got {s!r}") from None
    if not c or min(c) < 1:
        raise argparse.ArgumentTypeError(f"expected positive channel counts, got {s!r}")
    return c


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("captioning")
    a = g.add_argument
    a("--data", metavar="FOLDER", help="a folder of images with captions.tsv, emoji (the "
      "built-in Noto Color Emoji set, CLDR names in --lang en|ko) or digits (the built-in "
      "strips; the default)")
    a("--data-size", type=POS_INT, help="strips of the built-in digits set (default: 3000)")
    a("--image-size", type=POS_INT, nargs=2, metavar=("H", "W"),
      help="images are resized to this (default: the first image's size)")
    add_split_args(g, OWN, valid="images held out for validation",
                   test="images held out for testing")
    a("--min-freq", type=POS_INT, help="words seen fewer times become <unk> (default: 1)")
    a("--max-len", type=number(int, lo=1, hi=10_000),
      help="words per caption, longer ones cut (default: 20)")
    a("--decoder", choices=DECODERS, help="show-tell: the image vector starts the decoder; "
      "attend: attention over the image grid (default: attend)")
    a("--channels", type=channels, help="CNN channels per stage (default: 32,64,128)")
    a("--image-vector", type=WIDTH, help="size of the image vector (default: 256)")
    a("--lang", help="caption language code (BLEU tokenizes ko/ja/zh by character; "
      "--data emoji: the names' language, en or ko; default: en)")
    a("--eval-images", type=NONNEG_INT, help="validation images captioned at each evaluation, "
      "0 = all (default: 300)")
    a("--beam", type=BEAM, help="beam size of the final test captions (default: 5)")
    a("--feature-norm", choices=("on", "off"), help="layer-normalise the CNN grid per "
      "position (default: on for --data emoji, off otherwise)")
    a("--bridge-act", choices=("tanh", "linear"), help="the decoder's initial state from the "
      "image vector: linear (W v + b, the cs231n form) or tanh(W v + b) (default: linear)")
    a("--alpha", type=PENALTY, help="GNMT length penalty (default: 0)")


def from_args(args: argparse.Namespace, out: str) -> CaptionTask:
    s: dict[str, Any] = {**pick(args, OWN, *OWN), "data": args.data,
                         **pick(args, DEFAULTS, "batch_size", "seed")}
    ch = s.pop("channels")
    ch = channels(ch) if isinstance(ch, str) else ch
    split = load_split(s)
    s.update(images=split.record["images"], image_size=split.record["image_size"])
    model = {**pick(args, DEFAULTS, *MODEL_KEYS), "decoder": s["decoder"], "channels": ch,
             "image_vector": s["image_vector"], "vector_norm": True,
             "bridge_act": s["bridge_act"],
             "feature_norm": s["data"] == "emoji" if s["feature_norm"] is None
             else s["feature_norm"] == "on"}
    if model["cell"] not in DECODER_CELLS:
        raise ValueError(f"--cell for captioning must be one of {', '.join(DECODER_CELLS)}, "
                         f"got {model['cell']!r}")
    task = CaptionTask(split, s, model)
    record_split(out, split.record)
    r = split.record
    tell(f"{r['data']}: {r['images']:,} images, {r['captions']:,} captions (skipped: "
         f"{r['skipped']})", f"train {len(split.train):,} images ({len(task.pairs):,} pairs), "
         f"validation {len(split.valid):,}, test {len(split.test):,}",
         f"image size {r['image_size']}", f"vocabulary {task.tok.vocab_size:,} words",
         f"decoder {s['decoder']}")
    return task


def from_config(config: dict[str, Any], run_dir: Path) -> CaptionTask:
    return CaptionTask.from_config(config)


def saved_flags(config: dict[str, Any]) -> dict[str, Any]:
    s = config.get("settings", {})
    m = config["model"]
    return {**{k: s.get(k) for k in SETTINGS if k != "channels"},
            **{k: m.get(k) for k in MODEL_KEYS}, "channels": m.get("channels"),
            "batch_size": s.get("batch_size")}


def table(rows: dict[str, dict[str, Any]]) -> str:
    w = max(len(k) for k in rows)
    lines = [f"{'system':<{w}}  {'chrF':>6}  {'BLEU':>6}  {'exact':>6}"]
    lines += [f"{k:<{w}}  {v['chrf']:6.1f}  {v['bleu']:6.1f}  {v['exact']:6.3f}"
              for k, v in rows.items()]
    return "\n".join(lines)


def exact_by_length(hyps: list[str], refs: list[list[str]]) -> dict[int, tuple[float, int]]:
    """``{words in the first reference: (exact-match fraction, images)}``."""
    by: dict[int, list[bool]] = {}
    for h, r in zip(hyps, refs, strict=True):
        by.setdefault(len(r[0].split()), []).append(h in r)
    return {n: (sum(v) / len(v), len(v)) for n, v in sorted(by.items())}


def print_exact(hyps: list[str], refs: list[list[str]]) -> dict[str, Any]:
    e = exact_by_length(hyps, refs)
    print("exact match by caption length (words): " + ", ".join(
        f"{n}: {f:.3f} of {k}" for n, (f, k) in e.items()))
    return {str(n): {"exact": f, "images": k} for n, (f, k) in e.items()}


def test_part(split: Any) -> tuple[list[int], str]:
    return (split.test, "test") if split.test else (split.valid, "validation")


def report(task: CaptionTask, res: TrainResult, args: argparse.Namespace) -> None:
    out = res.run_dir
    cap = load(out)
    s, d = task.settings, task.split.data
    idx, part = test_part(task.split)
    imgs = d.images[idx]
    refs = [[task.norm(c) for c in d.captions[i]] for i in idx]
    train_caps = [[task.norm(c) for c in d.captions[i]] for i in task.split.train]
    rows = baselines(d.images[task.split.train], train_caps, imgs, refs, s["lang"])
    greedy = cap.caption(imgs, beam=1)
    rows[f"{s['decoder']} greedy"] = caption_scores(greedy, refs, s["lang"])
    if s["beam"] > 1:
        rows[f"{s['decoder']} beam {s['beam']}"] = cap.evaluate(imgs, refs, beam=s["beam"])
    print(f"{part} split, {len(idx):,} images:")
    print(table(rows))
    by_len = print_exact(greedy, refs)
    best = max(v["chrf"] for k, v in rows.items() if k.startswith(s["decoder"]))
    nn_ = rows["nearest neighbour (pixels)"]["chrf"]
    print(f"rnnkit ({s['decoder']}) is {abs(best - nn_):.1f} chrF "
          f"{'above' if best >= nn_ else 'below'} the nearest-neighbour baseline")
    ex = [{"image": d.names[i], "caption": greedy[k], "references": refs[k]}
          for k, i in enumerate(idx[:8])]
    for e in ex[:3]:
        print(f"  {e['image']}: {e['caption']}   (ref: {e['references'][0]})")
    try:
        from rnnkit.tasks.caption.plot import plot_attention, plot_grid
        plot_grid(imgs[:8], greedy[:8], [r[0] for r in refs[:8]], out / "captions.png")
        print(f"wrote {out / 'captions.png'}")
        if s["decoder"] == "attend":
            plot_attention(cap, imgs[0], out / "attention.png")
            print(f"wrote {out / 'attention.png'}")
    except ImportError:
        pass
    ckpt.atomic_write(out / "metrics.json", json.dumps(
        {"split": part, "n": len(idx), "best_step": res.best.get("step"), "steps": res.step,
         "train_seconds": round(res.elapsed, 1), "systems": rows,
         "greedy_exact_by_length": by_len, "examples": ex},
        indent=1, ensure_ascii=False))
    print(f"wrote {out / 'metrics.json'}")


# -- rnnkit eval ---------------------------------------------------------------------------------
def add_eval_args(p: Any) -> None:
    p.add_argument("--beam", type=BEAM, help="beam size, 1 = greedy only (default: the "
                   "run's, 5)")


def evaluate(args: argparse.Namespace) -> int:
    """``rnnkit eval RUN [--data FOLDER]``: chrF, BLEU and exact match of greedy and beam
    captions of the run's test images (or of a folder's)."""
    run = Path(args.run_dir)
    cap = load(run)
    s = cap.config["settings"]
    if getattr(args, "data", None):
        d = read_folder(args.data, tuple(cap.model.image_size))
        imgs, refs, name = d.images, d.captions, Path(args.data).name
    else:
        sp = load_split(s)
        idx, name = test_part(sp)
        imgs, refs = sp.data.images[idx], [sp.data.captions[i] for i in idx]
    beam = args.beam or s.get("beam", 5)
    rows: dict[str, Any] = {"greedy": cap.evaluate(imgs, refs, beam=1)}
    if beam > 1:
        rows[f"beam {beam}"] = cap.evaluate(imgs, refs, beam=beam)
    print(f"{name}: {len(refs):,} images")
    print(table(rows))
    norm = [[" ".join(cap.tok.split(c)) for c in r] for r in refs]
    rows["greedy_exact_by_length"] = print_exact(cap.caption(imgs, beam=1), norm)
    ckpt.atomic_write(run / f"eval_{name}.json", json.dumps(rows, indent=1))
    print(f"wrote {run / f'eval_{name}.json'}")
    return 0


# -- rnnkit caption ------------------------------------------------------------------------------
def add_caption_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG)")
    p.add_argument("--beam", type=BEAM, default=5, help="beam size, 1 = greedy "
                   "(default: 5)")
    p.add_argument("--attention-png", metavar="PNG", help="draw the attention of each word "
                   "over the (first) image (attend decoder)")


def caption(args: argparse.Namespace) -> int:
    """Print ``file<TAB>caption`` for each image."""
    cap: ImageCaptioner = load(args.run_dir)
    for f, c in zip(args.images, cap.caption(args.images, beam=args.beam), strict=True):
        print(f"{f}\t{c}", flush=True)
    if args.attention_png:
        from rnnkit.tasks.caption.plot import plot_attention
        plot_attention(cap, cap.images([args.images[0]])[0], args.attention_png)
        print(f"wrote {args.attention_png}", file=sys.stderr)
    return 0


SPEC = task_spec(
    globals(), "caption", "train an image captioner (CNN encoder + the seq2seq decoder)",
    verbs=(verb(caption, "caption images with a trained captioner", add_caption_args),),
    model_cells=list(DECODER_CELLS),
)
