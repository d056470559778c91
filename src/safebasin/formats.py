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


_MD_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def md_escape(value) -> str:
    """A name from the data (dir, bench, label) as inert text in report.md: no HTML, links or emphasis."""
    return _MD_SPECIALS.sub(r"\\\1", html.escape(str(value), quote=False))
