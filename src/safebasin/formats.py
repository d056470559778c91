"""Number and text formats: one style in every report, table and terminal line (rates as percentages, CIs as
ranges, differences in points, learning rates without float noise), and names from the data made inert in
Markdown."""

import html
import re

NA = "—"  # not applicable (the base model has no learning rate), as opposed to "" = not measured


def pct(x: float | None, digits: int = 1) -> str:
    """A rate as a percentage; plots use the same (PercentFormatter), never a bare fraction."""
    return NA if x is None else f"{x * 100:.{digits}f}%"


def pct_range(low: float | None, high: float | None, digits: int = 1) -> str:
    return NA if low is None or high is None else f"{low * 100:.{digits}f}–{high * 100:.{digits}f}%"


def points_diff(d: dict | None) -> str:
    """A difference of two rates in percentage points with its CI: '+85.4 pts (73.0 to 95.8)'. ASCII signs, so
    the report's sortable tables read them as numbers."""
    if not d:
        return NA
    return f"{d['diff'] * 100:+.1f} pts ({d['low'] * 100:+.1f} to {d['high'] * 100:+.1f})"


def num(x: float | None, digits: int = 3) -> str:
    return NA if x is None else f"{x:.{digits}f}"


def num_diff(d: dict | None, digits: int = 3) -> str:
    return NA if not d else f"{d['diff']:+.{digits}f} ({d['low']:+.{digits}f} to {d['high']:+.{digits}f})"


def lr(x: float | None) -> str:
    """Learning rates as 2e-4 and 1e-4, never 0.0001 beside 2e-05."""
    if x is None:
        return NA
    mantissa, exponent = f"{x:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


HEADLINES = {  # bench kind -> (column, result key, format): what `eval` and the run report show of a system's bench
    "toxicity": [("exp. max toxicity", "expected_max_toxicity", "{:.3f}"), ("toxicity prob.", "toxicity_probability", "{:.1%}"),
                 ("perplexity", "perplexity", "{:.1f}")],
    "toxicity-dialogue": [("offensive rate", "offensive_rate", "{:.1%}")],
    "dialogue": [("BLEU-1", "bleu-1", "{:.1f}"), ("BLEU-2", "bleu-2", "{:.1f}"), ("BLEU-4", "bleu-4", "{:.1f}"),
                 ("ROUGE-L", "rougeL", "{:.3f}"), ("unigram F1", "unigram_f1", "{:.3f}"), ("distinct-2", "distinct-2", "{:.3f}")],
    "kg": [("knowledge F1", "knowledge_f1", "{:.3f}"), ("entity F1", "entity_f1", "{:.3f}"), ("MRR", "retrieval.mrr", "{:.3f}"),
           ("unigram F1", "unigram_f1", "{:.3f}"), ("ROUGE-L", "rougeL", "{:.3f}"), ("BLEU-4", "bleu-4", "{:.1f}")],
}


def headline(b: dict) -> tuple[list[str], list[str]]:
    """(columns, cells) of a system bench's headline numbers, by its kind; NA where it measured none (MRR without a
    retriever). A kind not listed has no columns: its numbers are in eval.json."""
    def get(key: str):
        value = b
        for part in key.split("."):  # "retrieval.mrr": a nested number
            value = value.get(part) if isinstance(value, dict) else None
        return value

    cols = HEADLINES.get(b.get("kind"), [])
    return [c for c, _, _ in cols], [NA if get(k) is None else f.format(get(k)) for _, k, f in cols]


_MD_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def md_escape(value) -> str:
    """A name from the data (dir, bench, label) as inert text in report.md: no HTML, links or emphasis."""
    return _MD_SPECIALS.sub(r"\\\1", html.escape(str(value), quote=False))
