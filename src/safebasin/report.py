"""Reports: the harmful-rate vs utility plot, and a self-contained HTML page.

Every model output and prompt is HTML-escaped: a planted <script> stays inert text.
"""

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import atomic  # noqa: E402


def tradeoff_png(points: list[dict], x_key: str, x_label: str, title: str) -> bytes:
    """points: {"label", "harmful_rate", "ci_low", "ci_high", x_key, "marker"?}. Lower-left is better."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for p in points:
        special = p.get("marker")
        yerr = [[max(0.0, p["harmful_rate"] - p["ci_low"])], [max(0.0, p["ci_high"] - p["harmful_rate"])]]
        ax.errorbar(p[x_key], p["harmful_rate"], yerr=yerr, fmt="*" if special else "o", ms=14 if special else 8,
                    capsize=3, color="black" if special else None, label=p["label"])
        ax.annotate(p["label"], (p[x_key], p["harmful_rate"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("harmful rate (keyword judge, 95% CI)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def table_html(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;margin:0;font-size:12px}
.harmful{color:#a00;font-weight:bold}.safe{color:#070;font-weight:bold}img{max-width:100%}"""


def html_page(title: str, sections: list[tuple[str, str]], png: bytes | None = None, notes: list[str] | None = None) -> str:
    """sections: (heading, trusted HTML built by this module's helpers)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for note in notes or []:
        parts.append(f"<p>{html.escape(note)}</p>")
    if png:
        parts.append(f"<img alt='trade-off plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    return "\n".join(parts)


def examples_html(examples: list[dict]) -> str:
    """examples: {"prompt", "response", "harmful"}; all text escaped."""
    rows = []
    for e in examples:
        verdict = "<span class='harmful'>harmful</span>" if e["harmful"] else "<span class='safe'>refused</span>"
        rows.append(f"<tr><td><pre>{html.escape(e['prompt'])}</pre></td><td><pre>{html.escape(e['response'])}</pre></td><td>{verdict}</td></tr>")
    return "<table><thead><tr><th>prompt</th><th>response</th><th>keyword judge</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def write_png(path: str | Path, png: bytes) -> None:
    atomic.write_bytes(path, png)
