"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, the confusion
matrix (and its PNG), and for two classes ROC-AUC and a decision threshold chosen on validation.

Inputs are plain arrays: ``y`` ``(N,)`` true class indices, ``probs`` ``(N, C)`` predicted
probabilities, ``labels`` the ``C`` class names in index order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np


def decide(probs: np.ndarray, positive: int | None = None, threshold: float | None = None
           ) -> np.ndarray:
    """Predicted class indices ``(N,)``: argmax, or for two classes ``positive`` when its
    probability is >= ``threshold`` (when both are given)."""
    if positive is None or threshold is None:
        return probs.argmax(1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def choose_threshold(y: np.ndarray, p_pos: np.ndarray, positive: int) -> float:
    """Threshold on the positive class's probability that maximises macro-F1 on ``(y, p_pos)``
    (ties: the one closest to 0.5). Candidates are midpoints between consecutive scores."""
    s = np.unique(p_pos)
    cands = np.concatenate([[0.5], (s[1:] + s[:-1]) / 2]) if len(s) > 1 else np.array([0.5])
    is_pos = y == positive
    order = np.argsort(-p_pos, kind="stable")
    sp, pos_sorted = p_pos[order], is_pos[order]
    # for each candidate t: predicted positive = p >= t -> the first k sorted items
    k = np.searchsorted(-sp, -cands, side="right")
    tp = np.concatenate([[0], np.cumsum(pos_sorted)])[k]
    fp = k - tp
    P, N = is_pos.sum(), (~is_pos).sum()
    fn, tn = P - tp, N - fp
    f1_pos = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    f1_neg = 2 * tn / np.maximum(2 * tn + fn + fp, 1)
    macro = (f1_pos + f1_neg) / 2
    best = np.flatnonzero(macro >= macro.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def classification_metrics(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], *,
                           positive: int | None = None, threshold: float | None = None
                           ) -> dict[str, Any]:
    """All metrics as a JSON-able dict: ``n``, ``accuracy``, ``macro_f1``, ``per_class``
    (precision, recall, f1, support per label), ``confusion`` (rows = true, cols = predicted),
    and with two classes ``positive``, ``threshold``, ``roc_auc`` (None if y has one class)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y)
    probs = np.asarray(probs)
    C = len(labels)
    pred = decide(probs, positive, threshold)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(C)),
                                                 zero_division=0)
    present = s > 0  # macro-F1 over classes present in y or predicted
    present |= np.bincount(pred, minlength=C)[:C] > 0
    out: dict[str, Any] = {
        "n": len(y),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_f1": float(f[present].mean()) if present.any() else float("nan"),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, lab in enumerate(labels)},
        "confusion": confusion_matrix(y, pred, labels=list(range(C))).tolist(),
    }
    if C == 2 and positive is not None:
        both = len(np.unique(y)) == 2
        out["positive"] = labels[positive]
        out["threshold"] = 0.5 if threshold is None else float(threshold)
        out["roc_auc"] = float(roc_auc_score(y == positive, probs[:, positive])) if both else None
    return out


def format_table(m: dict[str, Any], title: str = "") -> str:
    """The metrics as a printable table."""
    rows = [f"{title}  (n = {m['n']})" if title else f"n = {m['n']}",
            f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for lab, v in m["per_class"].items():
        rows.append(f"{lab[:16]:<16}{v['precision']:>10.4f}{v['recall']:>10.4f}{v['f1']:>10.4f}"
                    f"{v['support']:>10d}")
    rows.append(f"accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}")
    if "roc_auc" in m:
        auc = "n/a (one class)" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
        rows.append(f"ROC-AUC {auc}   decision: {m['positive']} if p >= {m['threshold']:.4f}")
    return "\n".join(rows)


def plot_confusion(m: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> None:
    """Confusion matrix PNG: counts, and colour by the share of each true class (row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(m["per_class"])
    cm = np.asarray(m["confusion"])
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.2 + 0.7 * n, 1.9 + 0.6 * n), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.1%}", ha="center", va="center",
                    fontsize=8, color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=30 if n > 3 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
