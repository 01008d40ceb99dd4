"""What a comparison gives back, and the table, JSON and chart made of all of them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One line of the table. `ratio` is measured over baseline (None where it means nothing)."""

    comparison: str
    measured: str
    baseline: str = "-"
    ratio: float | None = None
    target: str = "-"
    met: bool | None = None


@dataclass
class Chart:
    """One panel of bench/results.png: a bar per label, the individual runs as dots."""

    title: str
    unit: str
    bars: dict[str, float]
    runs: dict[str, list[float]] = field(default_factory=dict)
    target: float | None = None  # drawn as a dashed line, in the bars' unit
    log: bool = False


@dataclass
class Outcome:
    name: str
    status: str = "ok"  # ok, skipped, failed
    message: str = ""
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    charts: list[Chart] = field(default_factory=list)
    seconds: float = 0.0
    load_average: dict[str, list[float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [asdict(r) for r in self.rows]
        return _finite(out)


def _finite(value: Any) -> Any:
    """JSON has no NaN: a number that could not be measured is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def ratio(a: float, b: float) -> float | None:
    if not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return round(a / b, 3)


def table(outcomes: list[Outcome]) -> str:
    header = ("comparison", "measured", "baseline", "ratio", "target", "met?")
    lines: list[tuple[str, ...]] = []
    for o in outcomes:
        if o.status != "ok":
            lines.append((o.name, f"{o.status.upper()}: {o.message}", "", "", "", ""))
            continue
        for r in o.rows:
            met = "-" if r.met is None else ("yes" if r.met else "NO")
            ratio_text = "-" if r.ratio is None else f"{r.ratio:.2f}"
            lines.append((r.comparison, r.measured, r.baseline, ratio_text, r.target, met))
    sized = [line for line in lines if line[2:] != ("", "", "", "")]
    widths = [max([len(h), *(len(line[i]) for line in sized)]) for i, h in enumerate(header)]
    widths = [min(w, 48) for w in widths]

    def fmt(cells: tuple[str, ...]) -> str:
        if cells[2:] == ("", "", "", ""):  # a skipped or failed comparison: one long cell
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        return "  ".join(
            f"{c:>{w}}" if i == 3 else f"{c:<{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def chart(outcomes: list[Outcome], path: Path, subtitle: str) -> bool:
    """Write every comparison's panels to one PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [c for o in outcomes if o.status == "ok" for c in o.charts]
    if not panels:
        return False
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        labels = list(panel.bars)
        values = [panel.bars[k] for k in labels]
        xs = range(len(labels))
        ax.bar(xs, values, color=["#3b7dd8" if i == 0 else "#9aa7b8" for i in xs])
        for i, label in enumerate(labels):
            points = panel.runs.get(label, [])
            if points:
                ax.plot([i] * len(points), points, "k.", markersize=4)
        for i, v in enumerate(values):
            text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
            ax.annotate(text, (i, v), ha="center", va="bottom", fontsize=8)
        if panel.target is not None:
            ax.axhline(panel.target, color="#c0392b", linestyle="--", linewidth=1)
        if panel.log:
            ax.set_yscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8, rotation=12)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.unit, fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"Pitlink benchmarks ({subtitle})", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
