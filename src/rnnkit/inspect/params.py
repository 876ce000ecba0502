"""Parameter counts, explained by formula, in Keras' and torch.nn's conventions.

One recurrent layer with ``I`` inputs and ``H`` units has ``G`` gate blocks (SimpleRNN 1,
GRU 3, LSTM 4). Each block has an input kernel ``(I, H)``, a recurrent kernel ``(H, H)`` and
biases:

* torch.nn keeps **two** bias vectors per block, ``b_ih`` and ``b_hh``: ``G × (I + H + 2) × H``;
* Keras keeps **one**, ``G × (I + H + 1) × H``, except ``GRU(reset_after=True)`` (its default),
  which needs the recurrent bias inside ``r ⊙ (W_hn h + b_hn)`` and so keeps two:
  ``3 × (I + H + 2) × H``. That is why Keras' default GRU and torch.nn's GRU have the same count.
* GRU ``reset_after=False`` (Cho et al. 2014) has no torch.nn equivalent; both biases would
  add up, so it has one bias per block in both conventions (rnnkit stores it that way).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

KINDS = {"rnn": 1, "simplernn": 1, "gru": 3, "lstm": 4}
_KERAS_NAME = {"rnn": "SimpleRNN", "simplernn": "SimpleRNN", "gru": "GRU", "lstm": "LSTM"}
_TORCH_NAME = {"rnn": "nn.RNN", "simplernn": "nn.RNN", "gru": "nn.GRU", "lstm": "nn.LSTM"}


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (torch convention for rnnkit layers)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class ParamFormula:
    """A parameter count and how it is made. ``str()`` gives the explanation."""

    kind: str
    convention: str
    total: int
    formula: str        # e.g. "4 × (6 + 16 + 1) × 16 = 1472"
    explanation: str

    def __str__(self) -> str:
        return f"{self.formula}\n{self.explanation}"

    def __int__(self) -> int:
        return self.total


def param_formula(
    kind: str,
    input_size: int,
    hidden_size: int,
    *,
    convention: str = "keras",
    reset_after: bool = True,
    bias: bool = True,
    num_layers: int = 1,
    bidirectional: bool = False,
) -> ParamFormula:
    """Parameter count of a recurrent layer (stack) and its formula as text.

    ``kind``: ``"rnn"`` (Keras ``SimpleRNN``), ``"lstm"`` or ``"gru"``. ``convention``:
    ``"keras"`` or ``"torch"``. Examples (I = 6, H = 16)::

        keras SimpleRNN: (6 + 16 + 1) × 16 = 368
        keras LSTM:      4 × (6 + 16 + 1) × 16 = 1472
        keras GRU:       3 × (6 + 16 + 2) × 16 = 1152   (reset_after=True)
        torch LSTM:      4 × (6 + 16 + 2) × 16 = 1536
    """
    k = kind.lower()
    if k not in KINDS:
        raise ValueError(f"kind must be one of 'rnn', 'lstm', 'gru', got {kind!r}")
    if convention not in ("keras", "torch"):
        raise ValueError(f"convention must be 'keras' or 'torch', got {convention!r}")
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                    ("num_layers", num_layers)):
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    G, H = KINDS[k], hidden_size
    if not bias:
        nb = 0
    elif k == "gru" and not reset_after:
        nb = 1
    elif convention == "torch" or (k == "gru" and reset_after):
        nb = 2
    else:
        nb = 1
    D = 2 if bidirectional else 1

    def one(i: int) -> tuple[int, str]:
        inner = f"{i} + {H}" + (f" + {nb}" if nb else "")
        s = f"({inner}) × {H}"
        return G * (i + H + nb) * H, (f"{G} × {s}" if G > 1 else s)

    parts, texts = [], []
    for layer in range(num_layers):
        n, t = one(input_size if layer == 0 else D * H)
        parts += [n] * D
        texts += [t] * D
    total = sum(parts)
    formula = " + ".join(texts) if len(texts) > 1 else texts[0]
    formula = f"{formula} = {total}"
    name = (_KERAS_NAME if convention == "keras" else _TORCH_NAME)[k]
    gates = {1: "1 block (h)", 3: "3 gate blocks (r, z, n)", 4: "4 gate blocks (i, f, g, o)"}[G]
    why = {
        0: "no biases",
        1: "one bias vector per block" + (" (Keras convention)" if convention == "keras" and
                                          k != "gru" else ""),
        2: "two bias vectors per block, b_ih and b_hh" + (
            " (Keras GRU reset_after=True keeps the recurrent bias inside r ⊙ (W_hn h + b_hn))"
            if convention == "keras" else " (torch.nn convention)"),
    }[nb]
    if k == "gru" and not reset_after and bias:
        why += " (GRU reset_after=False: a second bias would only add to the first)"
    explanation = (
        f"{name}({H}) on {input_size} features: {gates}, each with an input kernel "
        f"({input_size}×{H}), a recurrent kernel ({H}×{H}) and {why}."
    )
    if convention == "keras" and nb == 1 and k != "gru":
        alt = G * (input_size + H + 2) * H
        explanation += (f" torch.nn keeps two bias vectors (b_ih, b_hh), so the same layer "
                        f"has {alt} there.")
    if num_layers > 1 or bidirectional:
        explanation += (f" {num_layers} layer(s) × {D} direction(s); layers after the first "
                        f"read {D * H} features.")
    return ParamFormula(kind=k, convention=convention, total=total, formula=formula,
                        explanation=explanation)
