"""The plot set-ups: matplotlib's object API for reports, and a small Pillow line chart for every merge's card.

Reports (``diff``, ``sweep``, the experiments) draw with :func:`new_figure` (no pyplot state, no backend to
pick, thread-safe). The card's per-layer plot is drawn on every merge, so :func:`line_chart` draws it with
Pillow, which loads in 0.02 s where matplotlib takes 0.8 s: a few lines on fixed axes need no more.

Layering: a bottom module; the card, ``diff``, ``sweep`` and the reports draw with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib loads only when a plot is drawn, not for `lwmm-hub --help`
    from matplotlib.figure import Figure
    from PIL import ImageDraw, ImageFont

#: matplotlib's "tab10" colours, so the card's lines look like the reports'
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def new_figure(width: float, height: float) -> tuple[Figure, Any]:
    """A figure of ``width`` × ``height`` inches with one axes; save it with ``figure.savefig(path, dpi=…)``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


@dataclass(frozen=True)
class Line:
    """One series of a :func:`line_chart`: solid and thick when ``emphasised``, else dashed (``dash`` pixels on/off)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    emphasised: bool = False
    dash: int = 5


def line_chart(path: Path, lines: Sequence[Line], *, title: str, x_label: str, y_label: str,
               y_range: tuple[float, float], marker: tuple[float, str] | None = None, width: int = 760,
               height: int = 400) -> None:
    """A PNG line chart: one line per series, a legend, integer x ticks, five y ticks, and an optional dotted
    vertical ``marker`` (x, legend label)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, width - 20, 36, height - 52
    x_values = [value for line in lines for value in line.x] + ([marker[0]] if marker else [])
    x_low, x_high = min(x_values, default=0.0), max(x_values, default=1.0)
    x_high = x_high if x_high > x_low else x_low + 1

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_range[0]) / (y_range[1] - y_range[0]) * (bottom - top))

    for step in range(5):  # y ticks and grid
        value = y_range[0] + step * (y_range[1] - y_range[0]) / 4
        _, y = at(x_low, value)
        draw.line([(left, y), (right, y)], fill="#e6e6e6")
        draw.text((left - 6, y), f"{value:.2f}", fill="black", font=font, anchor="rm")
    every = max(1, math.ceil((x_high - x_low + 1) / 15))
    for value in range(math.ceil(x_low), math.floor(x_high) + 1, every):  # x ticks
        x, _ = at(value, y_range[0])
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), str(value), fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    entries: list[tuple[str, str, int, int]] = []  # label, colour, width, dash (0: solid)
    if marker is not None:
        x, _ = at(marker[0], y_range[0])
        _dashed(draw, [(x, top), (x, bottom)], fill="grey", width=1, dash=2)
        entries.append((marker[1], "grey", 1, 2))
    for index, line in enumerate(lines):
        colour, thickness, dash = PALETTE[index % len(PALETTE)], 3 if line.emphasised else 1, 0 if line.emphasised else line.dash
        points = [at(x, y) for x, y in zip(line.x, line.y, strict=True)]
        if dash:
            _dashed(draw, points, fill=colour, width=thickness, dash=dash)
        else:
            draw.line(points, fill=colour, width=thickness, joint="curve")
        entries.append((line.label, colour, thickness, dash))
    draw.text(((left + right) / 2, top / 2), title, fill="black", font=font, anchor="mm")
    draw.text(((left + right) / 2, height - 14), x_label, fill="black", font=font, anchor="mm")
    _vertical_text(image, y_label, font, centre=(16, (top + bottom) / 2))
    _legend(draw, entries, font, corner=(left + 8, top + 8))  # top left: where layer-wise weights are lowest
    image.save(path, format="PNG")


def _dashed(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], *, fill: str, width: int, dash: int) -> None:
    """A polyline drawn as ``dash`` pixels on, ``dash`` off, the pattern running on across its vertices."""
    travelled = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        position = 0.0
        while position < length:
            phase = travelled % (2 * dash)
            run = min((dash - phase) if phase < dash else (2 * dash - phase), length - position)
            if phase < dash:
                start, stop = position / length, (position + run) / length
                draw.line([(x0 + (x1 - x0) * start, y0 + (y1 - y0) * start), (x0 + (x1 - x0) * stop, y0 + (y1 - y0) * stop)],
                          fill=fill, width=width)
            position += run
            travelled += run


def _vertical_text(image: Any, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, *,
                   centre: tuple[float, float]) -> None:
    from PIL import Image, ImageDraw

    box = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    label = Image.new("L", (int(box[2] - box[0]) + 4, int(box[3] - box[1]) + 4), 0)
    ImageDraw.Draw(label).text((2 - box[0], 2 - box[1]), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    image.paste("black", (int(centre[0] - label.width / 2), int(centre[1] - label.height / 2)), label)


def _legend(draw: ImageDraw.ImageDraw, entries: list[tuple[str, str, int, int]],
            font: ImageFont.ImageFont | ImageFont.FreeTypeFont, *, corner: tuple[float, float]) -> None:
    """The legend in a framed box whose top-left corner is ``corner``: a line sample and the label per entry."""
    if not entries:
        return
    row, sample = 18, 28
    text_width = max(draw.textlength(label, font=font) for label, *_ in entries)
    box = (corner[0], corner[1], corner[0] + text_width + sample + 18, corner[1] + row * len(entries) + 6)
    draw.rectangle(box, fill="white", outline="#cccccc")
    for index, (label, colour, thickness, dash) in enumerate(entries):
        y = box[1] + 3 + row * index + row / 2
        segment = [(box[0] + 6, y), (box[0] + 6 + sample, y)]
        if dash:
            _dashed(draw, segment, fill=colour, width=thickness, dash=dash)
        else:
            draw.line(segment, fill=colour, width=thickness)
        draw.text((box[0] + 12 + sample, y), label, fill="black", font=font, anchor="lm")
