"""``rnnkit inspect``: look inside recurrent models.

* ``rnnkit inspect gradients``: ‖∂L/∂h_t‖ over time for RNN vs LSTM vs GRU, at initialisation
  and after training on the adding problem (a log-scale plot);
* ``rnnkit inspect cells RUN_DIR``: which units of a character language model track strings,
  comments, indentation, line position, bracket depth; gate saturation; an HTML page.
"""

from __future__ import annotations

import argparse

from rnnkit.inspect import gradients, units


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="look inside models: gradient flow, interpretable cells",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = p.add_subparsers(dest="inspect_command", required=True, metavar="WHAT")
    gradients.register(isub)
    units.register(isub)
