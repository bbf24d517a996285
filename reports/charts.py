"""Charts as inline SVG: no script, no network, readable on a phone and when printed.

Each function takes plain numbers (already computed by an audit) and returns markup safe to
insert into a page: every label is escaped here.

The drawing is laid out for a phone. A chart's viewBox is `WIDTH` units wide and the page
scales it to its container (style.html.j2 caps it at `MAX_WIDTH` pixels), so text of `FONT`
units reads at FONT × container / WIDTH pixels: about 10.7 px in the 358 px a 390 px phone
leaves, never the 4 px a desktop-sized drawing shrank to. Legends sit under the plot, each
name beside a swatch of its line, and tick labels are spaced by their estimated width so that
no two run together.
"""

from __future__ import annotations

import math
from datetime import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 400, 230
MAX_WIDTH = 560  # px on a wide screen: the text then reads at FONT × 1.4
FONT = 12  # units of the viewBox; the stylesheet sets svg.chart text to this size
CHAR = 0.58 * FONT  # the advance of an average character of system-ui, to lay out labels
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 12, 38
LEGEND_ROW = 18
PALETTE = ("#3056a8", "#c0392b", "#2e8b57", "#8e44ad", "#d4880f", "#16a0a0")
THRESHOLD_COLOR = "#7a2e8e"


def _frame(title: str, body: list[str], height: float = HEIGHT) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="{escape(title)}" '
                  f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(body)}</svg>')


def _ticks(low: float, high: float, n: int = 4) -> list[float]:
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / n))
    for m in (1, 2, 5, 10):
        if (high - low) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


def text_width(text: str) -> float:
    """The estimated width of `text` in viewBox units at `FONT`."""
    return len(text) * CHAR


def spaced(ticks: list[tuple[float, str]], low: float = 0, high: float = WIDTH,
           gap: float = 8) -> list[tuple[float, str, str]]:
    """Of `ticks` ((x, label) in viewBox units, in order), those whose labels keep `gap` units
    clear of the label shown before them, as (x, label, text-anchor): a label is centred on
    its tick, or starts or ends there where centring would cut it at `low` or `high`. A label
    equal to the one before it is dropped, so that no two shown are the same.

    >>> [label for _, label, _ in spaced([(46 + i * 342 / 29, f"2024-01-{i + 1:02d}") for i in range(30)])]
    ['2024-01-01', '2024-01-08', '2024-01-15', '2024-01-22']
    """
    shown, right = [], -math.inf
    for i, (x, label) in enumerate(ticks):
        if i and label == ticks[i - 1][1]:
            continue
        half = text_width(label) / 2
        anchor, start = ("start", x) if x - half < low else ("end", x - 2 * half) if x + half > high else \
            ("middle", x - half)
        if start >= right + gap:
            shown.append((x, label, anchor))
            right = start + 2 * half
    return shown


def time_labels(times: list) -> list[str]:
    """Short labels for the window ends of runs (ISO strings or datetimes): the date alone when
    every time is midnight, the time alone when all fall on one day, else month, day and time.

    >>> time_labels(["2024-01-03T00:00:00", "2024-01-04T00:00:00"])
    ['2024-01-03', '2024-01-04']
    >>> time_labels(["2024-01-03T10:00:00", "2024-01-04T11:00:00+00:00", None])
    ['01-03 10:00', '01-04 11:00', '']
    """
    parsed = [None if t is None or t == "" else t if isinstance(t, datetime) else datetime.fromisoformat(str(t))
              for t in times]
    known = [t for t in parsed if t is not None]
    if all(t.hour == t.minute == 0 for t in known):
        pattern = "%Y-%m-%d"
    elif len({t.date() for t in known}) == 1:
        pattern = "%H:%M"
    else:
        pattern = "%m-%d %H:%M"
    return ["" if t is None else t.strftime(pattern) for t in parsed]


def _axes(x0: float, x1: float, y0: float, y1: float, height: float, xlabel: str, ylabel: str,
          x_ticks: list[tuple[float, str]] | None = None) -> tuple[list[str], callable, callable]:
    """The axes of a plot `height` units high above its `BOTTOM` margin (the legend goes under
    that), with the scales from values to units."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - BOTTOM
    sx = (lambda v: LEFT + (v - x0) / (x1 - x0) * plot_w) if x1 > x0 else (lambda v: LEFT + plot_w / 2)
    sy = (lambda v: TOP + plot_h - (v - y0) / (y1 - y0) * plot_h) if y1 > y0 else (lambda v: TOP + plot_h / 2)
    out = [f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#9aa3b2"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#9aa3b2"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT - 4}" y1="{sy(t):.1f}" x2="{WIDTH - RIGHT}" y2="{sy(t):.1f}" stroke="#eef1f5"/>'
                   f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_num(t)}</text>')
    ticks = x_ticks if x_ticks is not None else [(t, _num(t)) for t in _ticks(x0, x1)]
    for x, label, anchor in spaced([(sx(value), label) for value, label in ticks], 2, WIDTH - 2):
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 4}" '
                   f'stroke="#9aa3b2"/><text class="xtick" x="{x:.1f}" y="{TOP + plot_h + 16}" '
                   f'text-anchor="{anchor}">{escape(label)}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h + 32}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{TOP + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {TOP + plot_h / 2})">{escape(ylabel)}</text>')
    return out, sx, sy


def _legend(entries: list[tuple[str, str, bool]], top: float) -> tuple[list[str], float]:
    """A legend under the plot: each (name, colour, dashed) as a swatch and its name, in rows
    that wrap at the drawing's width; returns the markup and its height."""
    out, x, y = ['<g class="legend">'], LEFT, top + LEGEND_ROW / 2
    for name, color, dashed in entries:
        width = 18 + text_width(name) + 14
        if x > LEFT and x + width > WIDTH - RIGHT:
            x, y = LEFT, y + LEGEND_ROW
        if dashed:
            out.append(f'<line class="swatch" x1="{x}" y1="{y:.1f}" x2="{x + 14}" y2="{y:.1f}" stroke="{color}" '
                       'stroke-width="2" stroke-dasharray="4 3"/>')
        else:
            out.append(f'<rect class="swatch" x="{x}" y="{y - 5:.1f}" width="14" height="10" rx="2" fill="{color}"/>')
        out.append(f'<text x="{x + 18}" y="{y + 4:.1f}">{escape(name)}</text>')
        x += width
    out.append("</g>")
    return out, y + LEGEND_ROW / 2 - top


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


def trend(title: str, series: dict[str, list[float | None]], labels: list[str], ylabel: str = "",
          thresholds: list[tuple[str, float]] = ()) -> Markup:
    """Lines over runs: `series` maps a name to one value per run (None where absent), `labels`
    name the runs (`time_labels`), and each of `thresholds` ((name, value)) is drawn as a dashed
    line across the plot, in the legend too."""
    values = [v for vs in series.values() for v in vs if v is not None]
    if not values:
        return Markup("")
    levels = [value for _name, value in thresholds]
    y0, y1 = min([0.0, *values, *levels]), max([*values, *levels]) * 1.05 or 1.0  # lists: one value is no iterable
    out, sx, sy = _axes(0, max(1, len(labels) - 1), y0, y1, HEIGHT, "run (window end)", ylabel,
                        list(enumerate(labels)))
    entries = []
    for name, value in thresholds:
        out.append(f'<line class="threshold" x1="{LEFT}" y1="{sy(value):.1f}" x2="{WIDTH - RIGHT}" '
                   f'y2="{sy(value):.1f}" stroke="{THRESHOLD_COLOR}" stroke-width="1.5" stroke-dasharray="4 3">'
                   f'<title>{escape(name)}: {_num(value)}</title></line>')
        entries.append((f"{name} {_num(value)}", THRESHOLD_COLOR, True))
    for k, (name, vs) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        points = [(sx(i), sy(v), v, labels[i]) for i, v in enumerate(vs) if v is not None]
        if not points:
            continue
        if len(points) > 1:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y, _v, _l in points) + '"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{escape(name)} {escape(label)}: '
                f'{_num(v)}</title></circle>' for x, y, v, label in points]
        entries.insert(len(entries) - len(thresholds), (name, color, False))
    legend, height = _legend(entries, HEIGHT)
    return _frame(title, out + legend, HEIGHT + height)


def lorenz(points: list[list[float]]) -> Markup:
    """The Lorenz curve of exposure against the line of equality."""
    if not points:
        return Markup("")
    out, sx, sy = _axes(0, 1, 0, 1, HEIGHT, "share of movies, least recommended first", "share of recommendations")
    out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#9aa3b2" stroke-dasharray="4 3"/>')
    out.append('<polyline fill="none" stroke="#3056a8" stroke-width="2" points="'
               + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points) + '"/>')
    legend, height = _legend([("exposure", PALETTE[0], False), ("equality", "#9aa3b2", True)], HEIGHT)
    return _frame("Lorenz curve of recommendation exposure", out + legend, HEIGHT + height)


def scatter(points: list[list[float]], xlabel: str, ylabel: str, title: str) -> Markup:
    """Points on log(1 + x) axes: counts span orders of magnitude."""
    if not points:
        return Markup("")
    xs, ys = [math.log10(1 + p[0]) for p in points], [math.log10(1 + p[1]) for p in points]
    top_x, top_y = max(xs) or 1.0, max(ys) or 1.0
    ticks = [(math.log10(1 + v), _num(v)) for v in (0, 1, 10, 100, 1000, 10_000, 100_000, 10**6)
             if math.log10(1 + v) <= top_x * 1.001]
    out, sx, sy = _axes(0, top_x, 0, top_y, HEIGHT, xlabel + " (log scale)", ylabel + " (log)", ticks)
    out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#3056a8" fill-opacity="0.45"/>'
            for x, y in zip(xs, ys)]
    return _frame(title, out)


LABEL_CHARS = 22  # a group's label is cut to this many characters (the whole one is the dot's tooltip)


def intervals(rows: list[dict], metric: str = "rmse", confidence: float = 0.95, part: str = "",
              title: str = "") -> Markup:
    """Each group's value as a dot with its `confidence` interval as a bar: the keys `metric`,
    `metric`_low and `metric`_high of each row, each followed by `part` (fairness.PARTS' suffix)."""
    value, low_key, high_key = f"{metric}{part}", f"{metric}_low{part}", f"{metric}_high{part}"
    rows = [{**r, metric: r.get(value), f"{metric}_low": r.get(low_key), f"{metric}_high": r.get(high_key)}
            for r in rows]
    shown = [r for r in rows if r.get(metric) is not None]
    if not shown:
        return Markup("")
    # A scale even when every value is 0 (a movie group never shown has a ratio of 0).
    top = max(max(r.get(f"{metric}_high") or r[metric] for r in shown), max(r[metric] for r in shown)) * 1.1 or 1.0
    height = 30 + 24 * len(shown) + BOTTOM
    labels = [_cut(str(r["label"])) for r in shown]
    left = min(WIDTH * 0.45, max(text_width(label) for label in labels) + 12)
    plot_w = WIDTH - left - RIGHT - text_width("0.000") - 8  # room for the value written after the bar
    scale = plot_w / top
    out = [f'<line x1="{left}" y1="10" x2="{left}" y2="{20 + 24 * len(shown)}" stroke="#9aa3b2"/>']
    for i, (r, label) in enumerate(zip(shown, labels)):
        y = 24 + 24 * i
        low, high = r.get(f"{metric}_low"), r.get(f"{metric}_high")
        out.append(f'<text x="{left - 6:.1f}" y="{y + 4}" text-anchor="end">{escape(label)}</text>')
        if low is not None and high is not None:
            out.append(f'<line x1="{left + low * scale:.1f}" y1="{y}" x2="{left + high * scale:.1f}" y2="{y}" '
                       'stroke="#3056a8" stroke-width="3"/>')
        out.append(f'<circle cx="{left + r[metric] * scale:.1f}" cy="{y}" r="4" fill="#1d2330"><title>'
                   f'{escape(str(r["label"]))}: {_num(r[metric])}'
                   + (f" [{_num(low)}, {_num(high)}]" if low is not None and high is not None else "")
                   + '</title></circle>')
        out.append(f'<text x="{left + (high if high is not None else r[metric]) * scale + 8:.1f}" y="{y + 4}">'
                   f'{r[metric]:.3f}</text>')
    axis = [(left + t * scale, _num(t)) for t in _ticks(0, top)]
    for x, label, anchor in spaced(axis, 2, WIDTH - 2):
        out.append(f'<text x="{x:.1f}" y="{34 + 24 * len(shown)}" text-anchor="{anchor}">{label}</text>')
    out.append(f'<text x="{WIDTH / 2}" y="{height - 6}" text-anchor="middle">{escape(metric.upper())}'
               f'{escape(title)} with {confidence:.0%} interval</text>')
    return _frame(f"{metric.upper()}{title} by group with intervals", out, height)


def _cut(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
