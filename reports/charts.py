"""Charts as inline SVG: no script, no network, readable on a phone and when printed.

Each function takes plain numbers (already computed by an audit) and returns markup safe to
insert into a page: every label is escaped here.
"""

from __future__ import annotations

import math
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 40
PALETTE = ("#3056a8", "#c0392b", "#2e8b57", "#8e44ad", "#d4880f", "#16a0a0")


def _frame(title: str, body: list[str], height: int = HEIGHT) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" '
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


def _axes(x0: float, x1: float, y0: float, y1: float, height: int, xlabel: str, ylabel: str,
          x_ticks: list[tuple[float, str]] | None = None) -> tuple[list[str], callable, callable]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - BOTTOM
    sx = (lambda v: LEFT + (v - x0) / (x1 - x0) * plot_w) if x1 > x0 else (lambda v: LEFT + plot_w / 2)
    sy = (lambda v: TOP + plot_h - (v - y0) / (y1 - y0) * plot_h) if y1 > y0 else (lambda v: TOP + plot_h / 2)
    out = [f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#9aa3b2"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#9aa3b2"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT - 4}" y1="{sy(t):.1f}" x2="{WIDTH - RIGHT}" y2="{sy(t):.1f}" stroke="#eef1f5"/>'
                   f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_num(t)}</text>')
    for value, label in (x_ticks if x_ticks is not None else [(t, _num(t)) for t in _ticks(x0, x1)]):
        out.append(f'<text x="{sx(value):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{TOP + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {TOP + plot_h / 2})">{escape(ylabel)}</text>')
    return out, sx, sy


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


def trend(title: str, series: dict[str, list[float | None]], labels: list[str], ylabel: str = "") -> Markup:
    """Lines over runs: `series` maps a name to one value per run (None where absent)."""
    values = [v for vs in series.values() for v in vs if v is not None]
    if not values:
        return Markup("")
    y0, y1 = min(0.0, min(values)), max(values) * 1.05 or 1.0
    step = max(1, len(labels) // 6)
    x_ticks = [(i, labels[i]) for i in range(0, len(labels), step)]
    out, sx, sy = _axes(0, max(1, len(labels) - 1), y0, y1, HEIGHT, "run (window end)", ylabel, x_ticks)
    for k, (name, vs) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        points = [(sx(i), sy(v), v, labels[i]) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y, _v, _l in points) + '"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{escape(name)} {escape(label)}: '
                f'{_num(v)}</title></circle>' for x, y, v, label in points]
        out.append(f'<text x="{WIDTH - RIGHT}" y="{TOP + 12 + 14 * k}" text-anchor="end" fill="{color}">'
                   f'{escape(name)}</text>')
    return _frame(title, out)


def lorenz(points: list[list[float]]) -> Markup:
    """The Lorenz curve of exposure against the line of equality."""
    if not points:
        return Markup("")
    out, sx, sy = _axes(0, 1, 0, 1, HEIGHT, "share of movies, least recommended first", "share of recommendations")
    out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#9aa3b2" stroke-dasharray="4 3"/>')
    out.append('<polyline fill="none" stroke="#3056a8" stroke-width="2" points="'
               + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points) + '"/>')
    return _frame("Lorenz curve of recommendation exposure", out)


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
    left, plot_w = 200, WIDTH - 200 - RIGHT
    scale = plot_w / top
    out = [f'<line x1="{left}" y1="10" x2="{left}" y2="{20 + 24 * len(shown)}" stroke="#9aa3b2"/>']
    for i, r in enumerate(shown):
        y = 24 + 24 * i
        low, high = r.get(f"{metric}_low"), r.get(f"{metric}_high")
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{escape(str(r["label"]))}</text>')
        if low is not None and high is not None:
            out.append(f'<line x1="{left + low * scale:.1f}" y1="{y}" x2="{left + high * scale:.1f}" y2="{y}" '
                       'stroke="#3056a8" stroke-width="3"/>')
        out.append(f'<circle cx="{left + r[metric] * scale:.1f}" cy="{y}" r="4" fill="#1d2330"><title>'
                   f'{escape(str(r["label"]))}: {_num(r[metric])}'
                   + (f" [{_num(low)}, {_num(high)}]" if low is not None and high is not None else "")
                   + '</title></circle>')
        out.append(f'<text x="{left + (high if high is not None else r[metric]) * scale + 8:.1f}" y="{y + 4}">'
                   f'{r[metric]:.3f}</text>')
    for t in _ticks(0, top):
        out.append(f'<text x="{left + t * scale:.1f}" y="{34 + 24 * len(shown)}" text-anchor="middle">{_num(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{escape(metric.upper())}'
               f'{escape(title)} with {confidence:.0%} interval</text>')
    return _frame(f"{metric.upper()}{title} by group with intervals", out, height)
