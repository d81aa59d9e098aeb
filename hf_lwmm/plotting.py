"""The one plot set-up: a figure from matplotlib's object API (no pyplot state, no backend to pick, thread-safe).

Layering: a bottom module; the card, ``diff``, ``sweep`` and the reports draw with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib loads only when a plot is drawn, not for `lwmm-hub --help`
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> tuple[Figure, Any]:
    """A figure of ``width`` × ``height`` inches with one axes; save it with ``figure.savefig(path, dpi=…)``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()
