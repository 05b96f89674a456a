"""The HTML page of ``GET /v1/stats``: the controller's history plotted as inline SVG.

The page needs no JavaScript and loads nothing else: the plot is an SVG element inside the
page, drawn by matplotlib with its text as paths, and the page reloads itself with a meta
refresh. Rendering an hour of history took 0.2 to 0.3 s on a 2-core machine, and a replica's
first page 1.2 to 1.6 s (matplotlib's import), so the gateway renders in a thread.
"""

from __future__ import annotations

import html
import io
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from serve.api import ApiError

__all__ = [
    "PLOT_POINTS",
    "REFRESH_S",
    "StatsPage",
    "merge_points",
    "render_stats_page",
    "stats_format",
]

REFRESH_S = 5
"""Seconds between the page's reloads."""

PLOT_POINTS = 600
"""Most points drawn per series; a longer history is merged into this many intervals."""

_FORMATS = ("json", "html")


def stats_format(format_: str | None, accept: str | None) -> Literal["json", "html"]:
    """Choose the reply of ``GET /v1/stats`` from its ``format`` parameter or ``Accept`` header.

    ``format`` wins when given and must be ``json`` or ``html`` (`ApiError` 422 otherwise).
    Without it the reply is HTML when ``Accept`` ranks ``text/html`` above ``application/json``,
    as a browser's does, and JSON otherwise (wildcards such as ``*/*`` mean JSON).

    >>> stats_format(None, "text/html,application/xhtml+xml,*/*;q=0.8")
    'html'
    >>> stats_format(None, "*/*"), stats_format("json", "text/html")
    ('json', 'json')
    """
    if format_ is not None:
        if format_ not in _FORMATS:
            raise ApiError(
                422,
                "invalid_request",
                f"field 'format': must be 'json' or 'html', got {format_!r}",
            )
        return "html" if format_ == "html" else "json"
    quality = _media_quality(accept or "")
    if quality.get("text/html", 0.0) > quality.get("application/json", 0.0):
        return "html"
    return "json"


def _media_quality(accept: str) -> dict[str, float]:
    """Return the ``q`` of each media type named in an ``Accept`` header (RFC 9110, 12.5.1)."""
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    return quality


@dataclass(frozen=True)
class StatsPage:
    """A rendered page and the time that drawing and writing it took, in milliseconds."""

    html: str
    render_ms: float


def render_stats_page(
    stats: dict[str, Any], history: list[dict[str, Any]], refresh_s: int = REFRESH_S
) -> StatsPage:
    """Render the controller's ``stats`` as text and its ``history`` as three panels.

    The panels are ``lambda``, the moving mean cost against the budget, and the share of each
    action among the requests of each interval, stacked.

    ``history`` is what `online.history.ControllerHistory.points` returns. With no points the
    page shows a notice that no history has been recorded yet in place of the plot.
    """
    started = time.perf_counter()
    unit = str(stats.get("unit", "samples"))
    if history:
        figure = _history_svg(history, unit)
    else:
        figure = (
            "<p class='empty'>No history yet. The controller records a point at most once a "
            "second, when a gateway reports costs.</p>"
        )
    body = _figures_table(stats, history) + figure
    render_ms = (time.perf_counter() - started) * 1000
    footer = (
        f"<p class='note'>Reloads every {refresh_s} s. Rendered in {render_ms:.0f} ms. "
        "<a href='?format=json'>JSON</a></p>"
    )
    return StatsPage(_PAGE.format(refresh_s=refresh_s, body=body + footer), render_ms)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh_s}">
<title>ttc-allocator: controller</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ padding: 2px 12px 2px 0; text-align: left; }}
td.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
.note, .empty {{ color: #555; }}
svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<h1>ttc-allocator: controller</h1>
{body}
</body>
</html>
"""


def _figures_table(stats: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """Return the current figures of ``stats`` as an HTML table."""
    unit = str(stats.get("unit", "samples"))
    rows = [
        ("requests", f"{stats.get('requests', 0)}"),
        ("budget", f"{stats.get('budget', 0.0):.4g} {unit} per request"),
        ("moving mean cost", f"{stats.get('window_mean_cost', 0.0):.4g}"),
        ("mean cost since the budget was set", f"{stats.get('mean_cost_since_budget', 0.0):.4g}"),
        ("mean cost", f"{stats.get('mean_cost', 0.0):.4g}"),
        ("lambda", f"{stats.get('lambda', 0.0):.6g}"),
        ("active gateway replicas", f"{stats.get('active_sources', 0)}"),
    ]
    actions = stats.get("actions") or {}
    if actions:
        mix = ", ".join(f"{name} {count}" for name, count in _by_samples(actions.items()))
        rows.append(("actions chosen", mix))
    if history:
        latest = datetime.fromtimestamp(history[-1]["time_s"], tz=timezone.utc)
        rows.append(("latest point", latest.strftime("%Y-%m-%d %H:%M:%S UTC")))
        rows.append(("points", f"{len(history)}"))
    cells = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td class='number'>{html.escape(value)}</td></tr>"
        for name, value in rows
    )
    return f"<table>\n{cells}\n</table>\n"


def _samples_of(action: str) -> float:
    """Return the sample count in an action name such as ``vote@3``, for ordering."""
    match = re.search(r"@(\d+)$", action)
    return float(match.group(1)) if match else float("inf")


def _by_samples(items: Any) -> list[tuple[str, int]]:
    return sorted(items, key=lambda item: (_samples_of(item[0]), item[0]))


def merge_points(history: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """Merge consecutive points into at most ``max_points`` intervals.

    A merged point takes the time, ``lambda``, moving mean cost and budget of the last point it
    covers, and the sum of their action counts, so the shares stay those of the requests.

    >>> points = [{"time_s": t, "lambda": t / 10, "window_mean_cost": 3.0, "budget": 4.0,
    ...            "actions": {"vote@3": 1}} for t in range(5)]
    >>> [(p["time_s"], p["actions"]) for p in merge_points(points, 2)]
    [(2, {'vote@3': 3}), (4, {'vote@3': 2})]
    """
    size = -(-len(history) // max_points)
    if size <= 1:
        return history
    merged = []
    for start in range(0, len(history), size):
        chunk = history[start : start + size]
        actions: dict[str, int] = {}
        for point in chunk:
            for name, count in point["actions"].items():
                actions[name] = actions.get(name, 0) + count
        merged.append({**chunk[-1], "actions": actions})
    return merged


def _history_svg(history: list[dict[str, Any]], unit: str) -> str:
    """Draw lambda, the moving mean cost against the budget and the action mix as one SVG."""
    # Imported here so that the gateway starts without loading matplotlib.
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = merge_points(history, PLOT_POINTS)
    times = np.array([point["time_s"] for point in history])
    span_s = float(times[-1] - times[0])
    scale, time_unit = (60.0, "min") if span_s > 600 else (1.0, "s")
    x = (times - times[-1]) / scale

    figure = Figure(figsize=(9, 7.5), layout="constrained")
    FigureCanvasAgg(figure)
    price, cost, mix = figure.subplots(3, 1, sharex=True)

    price.plot(x, [p["lambda"] for p in history], lw=1.0, color="tab:purple")
    price.set_ylabel("lambda")

    cost.plot(x, [p["window_mean_cost"] for p in history], lw=1.0, label="moving mean cost")
    budgets = [p["budget"] for p in history]
    cost.plot(x, budgets, lw=1.0, ls="--", color="black", drawstyle="steps-post", label="budget")
    cost.set_ylabel(f"{unit} per request")
    cost.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")

    names = [name for name, _ in _by_samples({n: 0 for p in history for n in p["actions"]}.items())]
    counts = np.array([[p["actions"].get(name, 0) for p in history] for name in names], float)
    totals = counts.sum(axis=0) if names else np.zeros(len(history))
    if names and totals.any():
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        colours = colormaps["viridis"](np.linspace(0.1, 0.9, len(names)))
        # Each point counts the actions since the previous one, so its share covers the
        # interval that ends at the point: step "pre".
        mix.stackplot(x, shares, labels=names, colors=colours, step="pre")
        # Reversed so that the legend lists the layers top to bottom, as they are stacked.
        handles, labels = mix.get_legend_handles_labels()
        mix.legend(
            handles[::-1],
            labels[::-1],
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize="small",
        )
        mix.set_ylim(0, 1)
    else:
        mix.text(0.5, 0.5, "no requests yet", ha="center", va="center", transform=mix.transAxes)
    mix.set_ylabel("share of requests")
    mix.set_xlabel(f"time ({time_unit}), 0 = latest point")

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    # Drop the XML declaration and doctype, which are not allowed inside an HTML body.
    return svg[svg.index("<svg") :]
