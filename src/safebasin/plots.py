"""Plots: every figure a report embeds, as PNG bytes (matplotlib, Agg). Axes keys are arguments, so each system
plots its own numbers under their own names."""

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from . import atomic  # noqa: E402


def fig_png(fig) -> bytes:
    if fig.get_layout_engine() is None:  # a figure laid out by its own engine (constrained) keeps it
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def tradeoff_png(points: list[dict], x_key: str, x_label: str, title: str,
                 y_label: str = "harmful rate (keyword judge, 95% CI)", **kw) -> bytes:
    """`tradeoff_figure` as PNG bytes."""
    return fig_png(tradeoff_figure(points, x_key, x_label, title, y_label, **kw))


def tradeoff_figure(points: list[dict], x_key: str, x_label: str, title: str,
                    y_label: str = "harmful rate (keyword judge, 95% CI)", *, y_key: str = "harmful_rate",
                    y_percent: bool = False, y_lim: tuple[float, float] | None = (-0.03, 1.03),
                    arrows: list[tuple[str, str]] = (), legend: bool = True):
    """points: {"label", y_key, f"{y_key}_ci" (or "ci_low"/"ci_high"), x_key, f"{x_key}_ci"?, "marker"?}: any two
    numbers of a system (harmful rate, toxicity, F1) against each other. Lower-left is better when both axes are
    'lower is better'. `arrows`: (from label, to label), e.g. a run to its EMA average. `y_lim` None: fit the data.
    Each point's label is placed by `place_labels` (nearest its own point, overlapping nothing, a leader line when
    it had to move away), and the legend repeats each point's colour and marker."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    by_label = {p["label"]: p for p in points}
    for p in points:
        special = p.get("marker")
        yci = p.get(f"{y_key}_ci") or (p["ci_low"], p["ci_high"])
        yerr = [[max(0.0, p[y_key] - yci[0])], [max(0.0, yci[1] - p[y_key])]]
        xci = p.get(f"{x_key}_ci")
        xerr = [[max(0.0, p[x_key] - xci[0])], [max(0.0, xci[1] - p[x_key])]] if xci else None
        ax.errorbar(p[x_key], p[y_key], yerr=yerr, xerr=xerr, fmt="*" if special else "o",
                    ms=14 if special else 8, capsize=3, color="black" if special else None, label=p["label"])
    for start, end in arrows:
        if start in by_label and end in by_label:
            a, b = by_label[start], by_label[end]
            ax.annotate("", xy=(b[x_key], b[y_key]), xytext=(a[x_key], a[y_key]),
                        arrowprops={"arrowstyle": "->", "color": "gray", "lw": 1.3, "shrinkA": 7, "shrinkB": 7})
    if y_lim:
        ax.set_ylim(*y_lim)
    ax.margins(x=0.12)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if y_percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.set_layout_engine("none")  # laid out now: fig_png must not move the axes under the placed labels
    legend_box = [ax.get_legend().get_window_extent(fig.canvas.get_renderer())] if ax.get_legend() else []
    place_labels(ax, [(p[x_key], p[y_key]) for p in points], [p["label"] for p in points], avoid=legend_box)
    return fig


_DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1),
               (1, 0.5), (-1, 0.5), (1, -0.5), (-1, -0.5), (0.5, 1), (-0.5, 1), (0.5, -1), (-0.5, -1)]


def place_labels(ax, xy: list[tuple[float, float]], labels: list[str], fontsize: float = 8, avoid: list = ()) -> list:
    """One text per point, put where its box overlaps no other label, no point and no edge of the axes, and lies
    nearer its own point than any other; tried close first, then further out with a grey leader line. Written here
    because adjustText (the library for this) repels labels iteratively and guarantees neither property: a label
    that drifts towards a neighbour's dot is the mislabelling this exists to prevent. `avoid`: more boxes (pixels)
    no label may cover, such as the legend. Returns the texts."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    pts = [tuple(ax.transData.transform(p)) for p in xy]
    frame = ax.get_window_extent(renderer)
    dot = 7.0  # half the side of the box a marker covers, in pixels
    placed, texts = list(avoid), []

    def gap(box, p):  # distance from a point to a box (0 inside)
        return max(box.x0 - p[0], 0, p[0] - box.x1) ** 2 + max(box.y0 - p[1], 0, p[1] - box.y1) ** 2

    def overlap(a, b):
        return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))

    def annotate(i, offset, dx, dy, leader=None):
        return ax.annotate(labels[i], xy[i], textcoords="offset pixels", xytext=offset, fontsize=fontsize,
                           ha="left" if dx > 0 else "right" if dx < 0 else "center",
                           va="bottom" if dy > 0 else "top" if dy < 0 else "center", arrowprops=leader,
                           annotation_clip=False)

    order = sorted(range(len(pts)), key=lambda i: -sum(1 for q in pts if abs(q[0] - pts[i][0]) + abs(q[1] - pts[i][1]) < 60))
    for i in order:
        best = None
        for radius in (9, 16, 26, 40, 60, 85):
            for dx, dy in _DIRECTIONS:
                offset = (dx * radius, dy * radius * 0.8)
                text = annotate(i, offset, dx, dy)
                box = text.get_window_extent(renderer)
                text.remove()
                own = gap(box, pts[i])
                cost = (sum(overlap(box, b) for b in placed)
                        + sum(overlap(box, type(box).from_extents(q[0] - dot, q[1] - dot, q[0] + dot, q[1] + dot))
                              for q in pts)
                        + (box.width * box.height - overlap(box, frame))
                        + 1e3 * sum(1 for j, q in enumerate(pts) if j != i and gap(box, q) <= own))
                if best is None or cost < best[0]:
                    best = (cost, offset, radius, box, dx, dy)
            if best[0] == 0:
                break
        _, offset, radius, box, dx, dy = best
        leader = {"arrowstyle": "-", "color": "0.55", "lw": 0.7, "shrinkA": 0, "shrinkB": 5} if radius > 9 else None
        texts.append(annotate(i, offset, dx, dy, leader))
        placed.append(box)
    return texts


def loss_curves_png(logs: dict[str, list[dict]]) -> bytes:
    """The training loss of each run, one panel per run (their data differ), with a moving average: the
    per-step loss of a small batch is noisy."""
    fig, axes = plt.subplots(1, len(logs), figsize=(3.6 * len(logs) + 0.6, 3.2), dpi=110, squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        steps, loss = [r["step"] for r in log], [r["loss"] for r in log]
        k = max(1, len(loss) // 6)
        ax.plot(steps, loss, lw=0.8 if k > 1 else 1.5, alpha=0.45 if k > 1 else 1.0, marker="" if k > 1 else "o", label="per step")
        if k > 1:
            smooth = [sum(loss[max(0, i - k + 1): i + 1]) / len(loss[max(0, i - k + 1): i + 1]) for i in range(len(loss))]
            ax.plot(steps, smooth, lw=2, label=f"mean of the last {k} steps")
        ax.set_title(f"{name} ({len(log)} steps)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss")
    return fig_png(fig)


def category_png(by_model: dict[str, dict], bench: str) -> bytes:
    """Grouped bars: harmful rate per category (with 95% CI), one bar per model variant."""
    cats = sorted({c for b in by_model.values() for c in b})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(cats) + 2), 4.2), dpi=110)
    width = 0.8 / max(1, len(by_model))
    for i, (label, b) in enumerate(by_model.items()):
        xs = [j + i * width for j in range(len(cats))]
        ys = [b.get(c, {}).get("harmful_rate", 0.0) for c in cats]
        err = [[max(0.0, y - b.get(c, {}).get("ci_low", y)) for c, y in zip(cats, ys)],
               [max(0.0, b.get(c, {}).get("ci_high", y) - y) for c, y in zip(cats, ys)]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=label)
    ax.set_xticks([j + width * (len(by_model) - 1) / 2 for j in range(len(cats))], cats, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("harmful rate (95% CI)")
    ax.set_title(f"{bench}: harmful rate per category", fontsize=10)
    ax.legend(fontsize=8)
    return fig_png(fig)


def basin_png(result: dict) -> bytes:
    """Harmful rate and held-out loss along θ0 → θ_raw, with raw (α=1) and EMA marked."""
    pts = result["points"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.plot([p["alpha"] for p in pts], [p["harmful_rate"] for p in pts], "o-", color="tab:red", label="probe harmful rate")
    ax.set_xlabel("α along θ0 → θ_raw (0 = start, 1 = raw fine-tune)")
    ax.set_ylabel("harmful rate", color="tab:red")
    ax.set_ylim(-0.03, 1.03)
    ax2 = ax.twinx()
    ax2.plot([p["alpha"] for p in pts], [p["heldout_loss"] for p in pts], "s--", color="tab:blue", label="held-out loss")
    ax2.set_ylabel("held-out loss", color="tab:blue")
    ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.annotate("raw", (1.0, 1.0), xytext=(3, -10), textcoords="offset points", fontsize=8)
    if result.get("ema"):
        e = result["ema"]
        ax.plot([e["alpha"]], [e["harmful_rate"]], "*", ms=16, color="black", label=f"EMA (α={e['alpha']:.2f})")
        ax2.plot([e["alpha"]], [e["heldout_loss"]], "*", ms=12, color="tab:blue")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"safety basin: probe {result['probe']} (n={result['probe_n']}), {result['judge']}", fontsize=9)
    return fig_png(fig)


def training_png(log: list[dict], title: str) -> bytes:
    """Loss over steps; with the monitor, the probe harmful rate of the live and EMA weights beside it."""
    probed = [r for r in log if "probe_harmful_live" in r]
    fig, axes = plt.subplots(1, 2 if probed else 1, figsize=(11 if probed else 6, 4), dpi=110, squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if probed:
        ax = axes[0][1]
        steps = [r["step"] for r in probed]
        ax.plot(steps, [r["probe_harmful_live"] for r in probed], "o-", label="live θ")
        if "probe_harmful_ema" in probed[0]:
            ax.plot(steps, [r["probe_harmful_ema"] for r in probed], "s-", label="EMA θ̄ (kept)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"probe harmful rate ({probed[0]['probe']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("safety monitor", fontsize=9)
    return fig_png(fig)


def write_png(path: str | Path, png: bytes) -> None:
    atomic.write_bytes(path, png)
