"""A Keras-like ``model.summary()`` for any torch module containing rnnkit layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rnnkit.inspect.params import count_params
from rnnkit.layers import Recurrent


def _shape(out: object) -> str:
    if isinstance(out, tuple) and out and isinstance(out[0], Tensor):
        out = out[0]  # recurrent layers return (outputs, state): show the outputs
    if isinstance(out, Tensor):
        return "(None, " + ", ".join(str(s) for s in out.shape[1:]) + ")"
    return "?"


def summary(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    print_fn=print,
) -> Summary:
    """Print (and return) a table of the model's layers: name (type), output shape, params.

    ``input_shape`` excludes the batch, as in Keras' ``Input(shape=...)``: ``(T, F)`` for
    float sequences, ``(T,)`` with ``dtype=torch.long`` for token ids. A batch of 1 is run
    through the model in eval mode to read the shapes. Recurrent layers are shown as one row
    (their cells are not listed); their output shape is that of the outputs ``(None, T, D*H)``.
    """
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    leaves: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, m: nn.Module) -> None:
        for name, child in m.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, Recurrent) or not list(child.children()) or hasattr(
                    child, "keras_params"):  # a layer read from Keras (rnnkit.from_keras)
                leaves.append((full, child))
            else:
                visit(full, child)

    if not isinstance(model, Recurrent):  # a layer alone is one row, its cells not listed
        visit("", model)
    if not leaves:
        leaves = [(type(model).__name__.lower(), model)]
    for name, m in leaves:
        def hook(mod, inp, out, name=name):
            rows.append((name, getattr(mod, "kind", None) if hasattr(mod, "keras_params")
                         else type(mod).__name__, _shape(out), count_params(mod)))
        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        x = torch.zeros(1, *input_shape, dtype=dtype, device=device)
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen = {r[0] for r in rows}
    for name, m in leaves:  # layers the forward pass never reached still hold parameters
        if name not in seen and count_params(m):
            rows.append((name, type(m).__name__, "(not called)", count_params(m)))
    total = count_params(model)
    trainable = count_params(model, trainable_only=True)
    # A model read from Keras also shows Keras' own count (its convention: one bias per gate
    # block) beside torch.nn's
    kmods = dict(leaves)
    keras = {n: kmods[n].keras_params for n, *_ in rows if hasattr(kmods.get(n), "keras_params")}
    c1 = max([len("Layer (type)")] + [len(f"{n} ({t})") for n, t, _, _ in rows]) + 2
    c2 = max([len("Output Shape")] + [len(s) for _, _, s, _ in rows]) + 2
    c3 = max([len("Param #")] + [len(f"{p:,}") for *_, p in rows])
    c4 = max([len("Keras #")] + [len(f"{p:,}") for p in keras.values()]) + 2 if keras else 0
    width = c1 + c2 + c3 + c4
    head = f"{'Layer (type)':<{c1}}{'Output Shape':<{c2}}{'Param #':>{c3}}"
    lines = [f'Model: "{type(model).__name__}"', "─" * width,
             head + (f"{'Keras #':>{c4}}" if keras else ""), "━" * width]
    for n, t, s, p in rows:
        k = f"{keras[n]:>{c4},}" if n in keras else " " * c4
        lines.append(f"{n + ' (' + t + ')':<{c1}}{s:<{c2}}{p:>{c3},}" + k)
    lines += ["─" * width, f" Total params: {total:,}" + (
        f" (Keras counts {sum(keras.values()):,})" if keras else ""),
        f" Trainable params: {trainable:,}",
        f" Non-trainable params: {total - trainable:,}", "─" * width]
    text = Summary("\n".join(lines))
    text.layers, text.params = len(rows), total
    if print_fn is not None:
        print_fn(text)
    return text


class Summary(str):
    """The table as a string (``str(s)``, ``print(s)``); in a REPL, where :func:`summary`
    has printed it already, its echo is one short line instead of the table again."""

    layers: int = 0
    params: int = 0

    def __repr__(self) -> str:
        return (f"<rnnkit summary: {self.layers} layer{'' if self.layers == 1 else 's'}, "
                f"{self.params:,} parameters>")
