"""Interpretable cells: which hidden units of a character language model track what?

Karpathy, Johnson & Fei-Fei (2015, "Visualizing and understanding recurrent networks") found
LSTM cells that switch on inside quotes, count line length or follow indentation. This module
runs a character model over Python source, records every unit (``h``, and ``c`` for LSTM) with
:func:`rnnkit.record`, and correlates each unit's activation with features of the text:

* ``in_string``  inside a string literal, quotes included (from :mod:`tokenize`);
* ``in_comment`` inside a ``#`` comment (from :mod:`tokenize`);
* ``indent``     indentation of the current line (leading columns, tab = 8);
* ``column``     position in the line (characters since the last newline);
* ``brackets``   depth of open ``( [ {`` brackets, counting only bracket tokens (not those in
  strings or comments).

The features are computed robustly for partial code: a text cut inside a string counts the
rest as string, an inconsistent dedent restarts the tokenizer at that line.

It also reports gate statistics (Karpathy et al.'s Fig. 4): the fraction of gate values that
are left-saturated (< 0.1) or right-saturated (> 0.9) per gate type (tanh gates are mapped to
[0, 1] by ``(v + 1) / 2``), and the mean forget (LSTM) or update (GRU) gate per layer.
"""

from __future__ import annotations

import json
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

FEATURES = ("in_string", "in_comment", "indent", "column", "brackets")
TANH_GATES = ("cell", "new")  # gates in [-1, 1]; the rest are sigmoids in [0, 1]


# -- text features ------------------------------------------------------------------------------
def _tokens(text: str) -> list[tuple[int, int, int]]:
    """``(token type, start offset, end offset)`` for ``text``, robust to partial code."""
    lines = text.splitlines(keepends=True)
    starts = np.concatenate([[0], np.cumsum([len(s) for s in lines])]).astype(int)
    out: list[tuple[int, int, int]] = []
    first = 0
    while first < len(lines):
        rest = iter(lines[first:])

        def off(pos: tuple[int, int], base: int = first) -> int:
            row = base + pos[0] - 1
            return int(starts[row]) + pos[1] if row < len(lines) else len(text)

        try:
            for tok in tokenize.generate_tokens(lambda it=rest: next(it, "")):
                if tok.type in (tokenize.STRING, tokenize.COMMENT, tokenize.OP):
                    out.append((tok.type, off(tok.start), off(tok.end)))
            return out
        except tokenize.TokenError as e:  # EOF inside a string / a bracketed statement
            if "string" in str(e.args[0]):
                out.append((tokenize.STRING, off(e.args[1]), len(text)))
            return out
        except (IndentationError, SyntaxError) as e:  # restart at the offending line
            first = max(first + (e.lineno or 1) - 1, first + 1)
    return out


def text_features(text: str) -> dict[str, np.ndarray]:
    """Per character of ``text``: each feature in :data:`FEATURES` as a float array ``(N,)``."""
    n = len(text)
    f = {k: np.zeros(n, dtype=np.float32) for k in FEATURES}
    depth = np.zeros(n + 1, dtype=np.float32)
    for kind, a, b in _tokens(text):
        if kind == tokenize.STRING:
            f["in_string"][a:b] = 1
        elif kind == tokenize.COMMENT:
            f["in_comment"][a:b] = 1
        elif b - a == 1 and text[a] in "([{":
            depth[a + 1] += 1   # characters after the opening bracket are one level deeper
        elif b - a == 1 and text[a] in ")]}":
            depth[a] -= 1       # the closing bracket is back at the outer level
    f["brackets"] = np.maximum(np.cumsum(depth)[:n], 0)
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        stripped = body.lstrip(" \t")
        indent = len(body[: len(body) - len(stripped)].expandtabs(8)) if stripped else 0
        f["indent"][pos: pos + len(line)] = indent
        f["column"][pos: pos + len(line)] = np.arange(len(line))
        pos += len(line)
    return f


def correlations(acts: np.ndarray, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pearson r of every unit with every feature: ``acts`` ``(N, U)`` -> feature -> ``(U,)``
    (0 where a unit or a feature is constant)."""
    a = acts - acts.mean(0)
    a_norm = np.sqrt((a * a).sum(0))
    out = {}
    for name, v in feats.items():
        v = v - v.mean()
        denom = a_norm * np.sqrt((v * v).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (a * v[:, None]).sum(0) / denom
        out[name] = np.nan_to_num(r)
    return out


# -- running a model over text ------------------------------------------------------------------
@dataclass
class UnitReport:
    """``acts`` ``(N, U)``: every unit over the text; ``names[u]`` like ``"l0.c37"``;
    ``r[feature]`` ``(U,)``; ``gate_stats`` rows (layer, gate, < 0.1, > 0.9, mean)."""

    text: str
    acts: np.ndarray
    names: list[str]
    feats: dict[str, np.ndarray]
    r: dict[str, np.ndarray]
    gate_stats: list[tuple[int, str, float, float, float]]
    cell: str

    def best(self) -> dict[str, tuple[str, float]]:
        """Feature -> (unit name, r) of the unit with the largest |r|."""
        return {k: (self.names[int(np.abs(v).argmax())], float(v[int(np.abs(v).argmax())]))
                for k, v in self.r.items()}

    def label(self, u: int) -> str:
        """What unit ``u`` is known for, the one wording the table and the page share: the
        features it is the best unit for (as in :meth:`format`), else its largest |r|."""
        name = self.names[u]
        mine = [(k, r) for k, (n, r) in self.best().items() if n == name]
        if mine:
            return "best for " + ", ".join(f"{k} (r = {r:+.2f})" for k, r in mine)
        k = max(self.r, key=lambda f: abs(self.r[f][u]))
        return f"r = {self.r[k][u]:+.2f} with {k}"

    def index(self, name: str) -> int:
        """The column of the unit called ``name`` (like ``"l0.c37"``)."""
        try:
            return self.names.index(name)
        except ValueError:
            layers = sorted({n.split(".")[0] for n in self.names})
            kinds = sorted({n.split(".")[1].rstrip("0123456789") for n in self.names})
            per = len(self.names) // (len(layers) * len(kinds))
            raise ValueError(f"no unit {name!r} in this model: expected a name like "
                             f"{self.names[0]!r} (layers {', '.join(layers)}; states "
                             f"{', '.join(kinds)}; units 0-{per - 1})") from None

    def format(self) -> str:
        lines = [f"{len(self.text):,} characters, {len(self.names)} units "
                 f"({self.cell.upper()}: h{' and c' if self.cell == 'lstm' else ''} per layer)",
                 "", "| feature | best unit | r |", "|---|---|---:|"]
        lines += [f"| {k} | {u} | {r:+.3f} |" for k, (u, r) in self.best().items()]
        if self.gate_stats:
            lines += ["", "| layer | gate | < 0.1 | > 0.9 | mean |", "|---:|---|---:|---:|---:|"]
            lines += [f"| {layer} | {g} | {lo:.1%} | {hi:.1%} | {m:.3f} |"
                      for layer, g, lo, hi, m in self.gate_stats]
        return "\n".join(lines)


def gate_statistics(gates: dict[str, Tensor], layer: int) -> list[tuple[int, str, float, float,
                                                                          float]]:
    """Rows (layer, gate, fraction < 0.1, fraction > 0.9, mean) for ``gates`` name ->
    values; tanh gates are mapped to [0, 1] first; the mean is of the raw values."""
    rows = []
    for g, v in gates.items():
        u = (v + 1) / 2 if g in TANH_GATES else v
        rows.append((layer, g, float((u < 0.1).float().mean()), float((u > 0.9).float().mean()),
                     float(v.mean())))
    return rows


@torch.no_grad()
def analyse(model: nn.Module, ids: Tensor, text: str, chunk: int = 1000) -> UnitReport:
    """Run ``model`` (a character LM: ``model(x (1, T), state) -> (logits, state)`` with its
    rnnkit layer at ``model.rnn``) over ``ids`` ``(N,)``, one id per character of ``text``."""
    from rnnkit.inspect.record import record
    from rnnkit.layers import Recurrent

    if len(ids) != len(text):
        raise ValueError(f"inspect cells needs one token per character (a char tokenizer); "
                         f"got {len(ids)} tokens for {len(text)} characters")
    layer = getattr(model, "rnn", None)
    if not isinstance(layer, Recurrent):
        raise ValueError(f"expected a character LM with its rnnkit layer at .rnn, got "
                         f"{type(model).__name__}")
    if layer.bidirectional:
        raise ValueError("inspect cells reads a left-to-right language model; got a "
                         "bidirectional layer")
    dev = next(model.parameters()).device
    model.eval()
    state = None
    with record(model) as rec:
        for s in range(0, len(ids), chunk):
            _, state = model(ids[None, s: s + chunk].to(dev), state)
    calls = rec.history["rnn"]
    per_layer = [[{k: torch.cat([c.records[li][0][k][0] for c in calls]).float().cpu()
                   for k in calls[0].names}] for li in range(layer.num_layers)]
    cell = layer.mode.split("_")[0]
    names, cols, stats = [], [], []
    for li, (d,) in enumerate(per_layer):
        for sname in layer.state_names:
            cols.append(d[sname].numpy())
            names += [f"l{li}.{sname}{u}" for u in range(layer.hidden_size)]
        gates = {g: v for g, v in d.items() if g not in layer.state_names}
        if cell != "rnn":
            stats += gate_statistics(gates, li)
    acts = np.concatenate(cols, axis=1)
    feats = text_features(text)
    return UnitReport(text, acts, names, feats, correlations(acts, feats), stats, cell)


# -- the HTML page ------------------------------------------------------------------------------
ALPHABET = "".join(chr(c) for c in range(48, 48 + 64))  # 64 levels, JSON-safe, no escapes
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rnnkit: interpretable cells</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
#text { font: 13px/1.35 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
        border: 1px solid #ccc; padding: .8em; }
#text span { border-radius: 2px; }
.legend span { display: inline-block; width: 2.2em; text-align: center; font-size: 11px; }
</style></head><body>
<h3>rnnkit: unit activations over text</h3>
<p>Unit <select id="unit"></select> <span id="info"></span></p>
<p id="missing" style="color:#b00020" hidden></p>
<p class="legend">activation: <span style="background:rgb(65,105,225);color:#fff">−1</span>
<span style="background:#fff">0</span><span style="background:rgb(220,20,60);color:#fff">+1</span>
(scaled by the unit's largest |value| on this text; URL fragment <code>#unit=N</code> or
<code>#unit=NAME</code> picks one)</p>
<div id="text"></div>
<script>
const DATA = __DATA__;
const A = DATA.alphabet, text = DATA.text, units = DATA.units;
const sel = document.getElementById("unit"), box = document.getElementById("text");
units.forEach((u, i) => { const o = document.createElement("option"); o.value = i;
  o.textContent = u.name + "  " + u.label; sel.appendChild(o); });
const spans = [];
for (const ch of text) { const s = document.createElement("span"); s.textContent = ch;
  box.appendChild(s); spans.push(s); }
function colour(v) {            // v in [-1, 1]: blue (negative) - white - red (positive)
  const t = Math.abs(v), c = v < 0 ? [65, 105, 225] : [220, 20, 60];
  const m = k => Math.round(255 + (c[k] - 255) * t);
  return "rgb(" + m(0) + ", " + m(1) + ", " + m(2) + ")";
}
function show(i) {
  const u = units[i]; sel.value = i;
  document.getElementById("info").textContent = u.label;
  for (let k = 0; k < spans.length; k++) {
    const v = (A.indexOf(u.q[k]) / 63) * 2 - 1;
    spans[k].style.backgroundColor = colour(v);
    spans[k].title = u.name + " = " + (v * u.scale).toFixed(3);
  }
}
function fromHash() {
  const m = /unit=([^&]+)/.exec(decodeURIComponent(location.hash));
  const note = document.getElementById("missing");
  note.hidden = true;
  if (!m) return 0;
  const byName = units.findIndex(u => u.name === m[1]);
  if (byName >= 0) return byName;
  if (/^[0-9]+$/.test(m[1]) && +m[1] < units.length) return +m[1];
  note.textContent = "No unit \u201c" + m[1] + "\u201d on this page (it offers " +
    units.map(u => u.name).join(", ") + "); showing " + units[0].name +
    ". Pick one above, or write the page again with --html-units " + m[1] + ".";
  note.hidden = false;
  return 0;
}
sel.addEventListener("change", () => { location.hash = "unit=" + sel.value; });
window.addEventListener("hashchange", () => show(fromHash()));
show(fromHash());
</script></body></html>
"""


def quantize(v: np.ndarray) -> tuple[str, float]:
    """``v`` ``(N,)`` -> one character per value (64 levels over [-s, s], s = max |v|), s."""
    s = float(np.abs(v).max()) or 1.0
    q = np.rint((v / s + 1) / 2 * 63).astype(int)
    return "".join(ALPHABET[k] for k in q), s


def html_units(report: UnitReport, units: int | list[str]) -> list[int]:
    """The units shown: those named, in order; or a count of them, the best one per feature
    first, then by largest |r| over features."""
    if not isinstance(units, int):
        return [report.index(n) for n in units]
    if units < 1:
        raise ValueError(f"the page needs at least one unit; got {units}")
    order: list[int] = []
    for v in report.r.values():
        order.append(int(np.abs(v).argmax()))
    strength = np.max(np.abs(np.stack(list(report.r.values()))), axis=0)
    order += [int(u) for u in np.argsort(-strength)]
    seen: list[int] = []
    for u in order:
        if u not in seen:
            seen.append(u)
    return seen[:units]


def write_html(report: UnitReport, out: str | Path, units: int | list[str] = 32,
               max_chars: int = 4000) -> Path:
    """A self-contained page (inline CSS/JS, no network): the text coloured per character by
    a chosen unit's activation, with a unit picker. ``units``: how many to offer (the
    strongest), or their names (``["l0.c37", "l1.h5"]``)."""
    n = min(len(report.text), max_chars)
    shown = []
    for u in html_units(report, units):
        q, s = quantize(report.acts[:n, u])
        shown.append({"name": report.names[u], "q": q, "scale": s, "label": report.label(u)})
    data = json.dumps({"alphabet": ALPHABET, "text": report.text[:n], "units": shown})
    data = data.replace("</", "<\\/")  # the text may contain "</script>"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(PAGE.replace("__DATA__", data), encoding="utf-8")
    return out
