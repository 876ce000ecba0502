"""How far back does the gradient reach? ‖∂L/∂h_t‖ for every time step and layer.

``∂L/∂h_t`` here is the *total* derivative of the loss with respect to the hidden state at step
``t``: the path through the layer above (or the readout) plus every path through the later time
steps, ``∂L/∂h_t = ∂L/∂y_t + (∂h_{t+1}/∂h_t)ᵀ ∂L/∂h_{t+1}``. In a vanilla RNN the second term
multiplies by the recurrent Jacobian once per step, so the norm decays geometrically back from
the loss (Bengio et al. 1994; Pascanu et al. 2013); LSTM's additive cell state and GRU's update
gate keep it alive.

It is measured exactly, without approximations: every layer runs the reference loop, and each
step's new state gets a zero "probe" added, ``h_t + p_t`` with ``p_t = 0``; then
``∂L/∂p_t = ∂L/∂h_t``. The probes do not change any value; the model is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.kernels.reference import gather_time, reverse_index
from rnnkit.layers import Recurrent


@dataclass
class GradientFlow:
    """``grads[key]`` ``(B, T, H)``: ∂L/∂h_t per layer, keys ``"<module>.l<i>"`` (with
    ``"_reverse"`` for the backward direction, as torch.nn names weights); time-aligned, zero
    past each sequence's length. :meth:`norms` gives ‖∂L/∂h_t‖ over the batch and units."""

    grads: dict[str, Tensor]
    loss: float

    def norms(self) -> dict[str, Tensor]:
        """Key -> ``(T,)``: the norm of ∂L/∂h_t over the batch and hidden units."""
        return {k: g.transpose(0, 1).flatten(1).norm(dim=1) for k, g in self.grads.items()}

    def __repr__(self) -> str:
        rows = [f"{k}: ‖∂L/∂h_t‖ {n[0]:.2e} at t=0 … {n[-1]:.2e} at t={len(n) - 1}"
                for k, n in self.norms().items()]
        return f"GradientFlow(loss={self.loss:.4g}; " + "; ".join(rows) + ")"


@contextmanager
def _probed(model: nn.Module) -> Iterator[dict[tuple[str, int], list[Tensor]]]:
    """Run every rnnkit layer of ``model`` on the reference loop, adding a zero probe to each
    step's new hidden state ``h``. Yields ``(layer name, cell index) -> [probe per step]`` (in
    the order the cell ran), and restores the layers on exit."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, Recurrent)]
    if not layers:
        raise ValueError(f"gradient_flow found no rnnkit layer (RNN, LSTM, GRU) in "
                         f"{type(model).__name__}")
    probes: dict[tuple[str, int], list[Tensor]] = {}
    saved = []
    for name, layer in layers:
        saved.append((layer, layer.kernel))
        layer.kernel = "reference"
        for k, cell in enumerate(layer.cells):
            plist = probes.setdefault((name, k), [])

            def step(x: Tensor, state: tuple[Tensor, ...], _cell: nn.Module = cell,
                     _plist: list = plist) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
                new, gates = type(_cell).step(_cell, x, state)
                p = torch.zeros_like(new[0], requires_grad=True)
                _plist.append(p)
                return (new[0] + p, *new[1:]), gates

            cell.step = step  # instance attribute: shadows the class method until restored
    try:
        yield probes
    finally:
        for layer, kernel in saved:
            layer.kernel = kernel
            for cell in layer.cells:
                cell.__dict__.pop("step", None)


def gradient_flow(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], Tensor | tuple],
    lengths: Tensor | None = None,
) -> GradientFlow:
    """∂L/∂h_t for every step and every layer of every rnnkit layer in ``model``.

    ``loss_fn(model, batch)`` returns the scalar loss (or a tuple whose first item is it, so a
    trainer task's ``lambda m, b: task.loss(m, b, None)`` works). The model must call each
    rnnkit layer once per ``loss_fn`` call on the whole sequence. ``lengths`` ``(B,)``: the
    lengths the model passes its layers, if any (to re-align the backward direction).
    Parameter gradients are not touched.
    """
    with _probed(model) as probes:
        out = loss_fn(model, batch)
        loss = out[0] if isinstance(out, tuple | list) else out
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor (or a tuple starting with "
                             f"one), got {type(loss).__name__}"
                             f"{'' if not isinstance(loss, Tensor) else tuple(loss.shape)}")
        flat = [p for plist in probes.values() for p in plist]
        if not flat:
            raise ValueError("loss_fn ran no rnnkit layer of the model")
        gs = iter(torch.autograd.grad(loss, flat, allow_unused=True))
    grads: dict[str, Tensor] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Recurrent)}
    for (name, k), plist in probes.items():
        steps = [next(gs) for _ in plist]
        if not plist:
            continue
        T = len(plist)
        if any(len(pl) != T for (n2, _), pl in probes.items() if n2 == name):
            raise ValueError(f"layer {name!r} ran more than once or on different lengths; "
                             f"gradient_flow needs one call per loss")
        li, d = divmod(k, layers[name].num_directions)
        g = torch.stack([torch.zeros_like(p) if v is None else v
                         for v, p in zip(steps, plist, strict=True)], 1)
        if d == 1:  # the loop ran in reversed order: put the gradients back in time order
            g = gather_time(g, reverse_index(lengths, g.shape[0], T, g.device))
        grads[f"{name + '.' if name else ''}l{li}{'_reverse' if d else ''}"] = g.detach()
    return GradientFlow(grads, float(loss.detach()))


# -- the picture: RNN vs LSTM vs GRU ------------------------------------------------------------
def plot_flows(curves: dict[str, Tensor], out: str, title: str) -> None:
    """One line per label: ``curves[label]`` ``(T,)`` norms against t, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    families = list(dict.fromkeys(label.split(" (")[0] for label in curves))
    for label, n in curves.items():  # one colour per cell; dashed at initialisation
        ls = "--" if "init" in label else "-"
        ax.semilogy(range(len(n)), n.clamp_min(1e-45).numpy(), ls, label=label, lw=1.6,
                    color=f"C{families.index(label.split(' (')[0])}")
    ax.set_xlabel("time step t (the loss reads the last step)")
    ax.set_ylabel("‖∂L/∂h_t‖  (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
