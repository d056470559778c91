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
                 y_label: str = "harmful rate (keyword judge, 95% CI)", *, y_key: str = "harmful_rate",
                 y_percent: bool = False, y_lim: tuple[float, float] | None = (-0.03, 1.03),
                 arrows: list[tuple[str, str]] = (), legend: bool = True) -> bytes:
    """points: {"label", y_key, f"{y_key}_ci" (or "ci_low"/"ci_high"), x_key, f"{x_key}_ci"?, "marker"?}: any two
    numbers of a system (harmful rate, toxicity, F1) against each other. Lower-left is better when both axes are
    'lower is better'. `arrows`: (from label, to label), e.g. a run to its EMA average. `y_lim` None: fit the data.
    Labels are placed towards the middle of the axes, so none is cut off at an edge."""
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
    x0, x1 = ax.get_xlim()
    mid = (x0 + x1) / 2
    for i, p in enumerate(sorted(points, key=lambda p: (p[x_key], p[y_key]))):
        left = p[x_key] > mid  # a label on the right half goes to the left of its point, and vice versa
        low = p[y_key] < sum(ax.get_ylim()) / 2
        dy = (8 if i % 2 == 0 else 18) if low else (-14 if i % 2 == 0 else -24)  # alternate: close points stay legible
        ax.annotate(p["label"], (p[x_key], p[y_key]), textcoords="offset points", xytext=(-8 if left else 8, dy),
                    ha="right" if left else "left", fontsize=8, annotation_clip=True)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if y_percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")
    return fig_png(fig)


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
