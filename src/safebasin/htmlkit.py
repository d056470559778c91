"""The HTML kit: self-contained report pages. Every model output and data string is escaped (a planted <script>
stays inert text); a page loads nothing, and its Content-Security-Policy allows only its own inline style and
scripts, by hash; each page records the environment it was made in (versions, commit, CPU)."""

import base64
import hashlib
import html
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


class Html(str):
    """Markup this module built from escaped parts: table cells of this type go in as they are, any other
    value is escaped."""


def _cell(value) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def table_html(header: list, rows: list[list], *, table_id: str | None = None, sortable: bool = False) -> str:
    """A table inside a box that scrolls sideways on a narrow screen. `sortable`: the page's script sorts it
    by a click on a column head (the table is complete without the script)."""
    attrs = (f" id='{html.escape(table_id)}'" if table_id else "") + (" class='sortable'" if sortable else "")
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def filter_html(table_id: str, selects: dict[int, tuple[str, list[str]]], search: str = "search") -> str:
    """Controls that filter the rows of `table_id`: a text search over whole rows, and per column
    {column index: (label, values)} a choice of one value. Hidden until the page's script shows them."""
    parts = [f"<input type='search' placeholder='{html.escape(search)}' aria-label='{html.escape(search)}'>"]
    for col, (label, values) in selects.items():
        options = f"<option value=''>{html.escape(label)}: all</option>" + "".join(
            f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values)
        parts.append(f"<select data-col='{col}' aria-label='{html.escape(label)}'>{options}</select>")
    return f"<div class='filters' data-filter='{html.escape(table_id)}' hidden>{' '.join(parts)} <output></output></div>"


def details_html(summary: str, body: str, css: str = "") -> Html:
    """A compact cell that opens on a click (no script needed): `summary` and `body` are escaped here."""
    cls = f" class='{html.escape(css)}'" if css else ""
    return Html(f"<details><summary{cls}>{html.escape(summary)}</summary><pre>{html.escape(body)}</pre></details>")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}table.sortable th{cursor:pointer}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f8f8f8;padding:6px;margin:0;font-size:12px;max-width:60ch}
details summary{cursor:pointer;white-space:nowrap}.bad,.harmful{color:#a00;font-weight:bold}
.good,.safe{color:#070;font-weight:bold}img{max-width:100%;height:auto}.filters{margin:.5em 0}
.filters input,.filters select{font-size:1em;margin:0 .3em .3em 0;max-width:100%}.lead{font-size:1.05em}
.conclusion{background:#f6f8fa;border-left:4px solid #888;padding:.5em 1em}small{color:#555}
@media (max-width:600px){body{margin:1em auto;padding:0 .5em}td,th{padding:3px 4px}h1{font-size:1.4em}}"""

SORT_FILTER_JS = """(function () {
  "use strict";
  function key(row, col) {
    var text = row.cells[col] ? row.cells[col].textContent.trim() : "";
    var n = parseFloat(text);
    return isNaN(n) ? [1, text.toLowerCase()] : [0, n];
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      function sort() {
        var up = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, col), y = key(b, col);
          var c = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
          return up ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
    });
  });
  document.querySelectorAll("[data-filter]").forEach(function (box) {
    var table = document.getElementById(box.getAttribute("data-filter"));
    if (!table) { return; }
    var controls = box.querySelectorAll("input, select");
    var count = box.querySelector("output");
    function apply() {
      var rows = table.tBodies[0].rows, shown = 0;
      Array.prototype.forEach.call(rows, function (row) {
        var ok = true;
        Array.prototype.forEach.call(controls, function (c) {
          var want = c.value.trim().toLowerCase();
          if (!want) { return; }
          if (c.tagName === "SELECT") {
            var cell = row.cells[Number(c.getAttribute("data-col"))];
            ok = ok && !!cell && cell.textContent.trim().toLowerCase() === want;
          } else {
            ok = ok && row.textContent.toLowerCase().indexOf(want) !== -1;
          }
        });
        row.hidden = !ok;
        shown += ok ? 1 : 0;
      });
      if (count) { count.textContent = shown + " of " + rows.length + " rows"; }
    }
    Array.prototype.forEach.call(controls, function (c) { c.addEventListener("input", apply); });
    box.hidden = false;
    apply();
  });
})();"""


def csp_hash(text: str) -> str:
    """The CSP source that allows exactly this inline <style> or <script> body, and nothing else."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def csp(scripts: list[str] = ()) -> str:
    """No 'unsafe-inline' anywhere: the page's own style and scripts are allowed by their hashes."""
    policy = f"default-src 'none'; img-src data:; style-src {csp_hash(STYLE)}; base-uri 'none'; form-action 'none'"
    if scripts:
        policy += "; script-src " + " ".join(csp_hash(s) for s in scripts)
    return policy


def img_html(alt: str, png: bytes) -> str:
    """A PNG inlined as a data URI: the page stays one self-contained file."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """The commit of this source tree, when it is a git checkout (not of some repo an installed copy sits in)."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode or Path(top.stdout.strip()).resolve() / "src" / "safebasin" != here:
            return "unknown (not a git checkout)"
        commit = git("rev-parse", "--short=12", "HEAD").stdout.strip()
        dirty = git("diff", "--quiet", "HEAD", "--", ":/src").returncode == 1  # read-only: the index is not refreshed
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return commit + (" with uncommitted changes to src/" if dirty else "")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows: every figure is stated beside its CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Where and with what a result was made: versions, commit, CPU, date. No paths or host names: reports are shared."""
    import os

    from . import __version__

    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "safebasin": __version__,
            "git commit": _git_commit(), "python": platform.python_version(),
            **{p: _version(p) for p in ("torch", "transformers", "accelerate", "numpy", "matplotlib")},
            "CPU": f"{cpu_name()} ({os.cpu_count()} logical cores visible)", "OS": f"{platform.system()} {platform.release()}"}


def html_page(title: str, sections: list[tuple[str, str]], png: bytes | None = None, notes: list[str] | None = None,
              *, intro: str = "", scripts: list[str] = (), provenance: dict | None = None) -> str:
    """sections: (heading, trusted HTML built by this module's helpers); `intro`: trusted HTML under the title;
    `scripts`: trusted JS (this module's), allowed by hash; `provenance`: {name: value} shown at the end
    (default: this machine now, via environment())."""
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp(scripts)}\">",
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>", intro]
    for note in notes or []:
        parts.append(f"<p>{html.escape(note)}</p>")
    if png:
        parts.append(img_html("trade-off plot", png))
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    prov = environment() if provenance is None else provenance
    parts.append("<h2>Provenance</h2>" + table_html(["what", "value"], [[k, v] for k, v in prov.items()]))
    parts += [f"<script>{s}</script>" for s in scripts]
    parts.append("</body></html>")
    return "\n".join(parts)


def examples_html(examples: list[dict]) -> str:
    """examples: {"prompt", "response", "harmful"}; all text escaped. The keyword judge only looks for a refusal
    phrase, so its verdict is shown as that."""
    rows = []
    for e in examples:
        verdict = "<span class='harmful'>no refusal phrase</span>" if e["harmful"] else "<span class='safe'>refusal phrase</span>"
        rows.append(f"<tr><td><pre>{html.escape(e['prompt'])}</pre></td><td><pre>{html.escape(e['response'])}</pre></td><td>{verdict}</td></tr>")
    return ("<div class='scroll'><table><thead><tr><th>prompt</th><th>response</th><th>keyword judge</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def seeded_sample(indices, k: int, seed: int = 0) -> list:
    """k of `indices` drawn with `seed`, in their own order: examples nobody picked by hand."""
    import random

    indices = sorted(indices)
    return sorted(random.Random(seed).sample(indices, min(k, len(indices))))


def story_page(title: str, *, headline: str, done: str, arms: dict[str, str], results: str, differences: str,
               caveats: list[str], examples: list[tuple[str, str]], generations: str, files: list[tuple[str, str]],
               timings: dict[str, float], png: bytes | None = None, content_warning: str | None = None,
               provenance: dict | None = None) -> str:
    """The report every scenario writes, in the safety report's order: the headline (and, where the prompts are
    offensive, a content warning) on the first screen; what was done; each arm in plain words; the results; the
    paired differences against the reference arm with each metric's cost; the system doc's caveats; fair examples
    (a seeded sample, then where the arms disagree most); every generation; files, timings and provenance.
    `headline`, `done`, `arms`, `caveats`, `content_warning` and `files` are plain text (escaped here);
    `results`, `differences`, `generations` and the example bodies are HTML from this module's helpers."""
    esc = html.escape
    intro = f"<div class='conclusion'><b>{esc(headline)}</b></div>"
    if content_warning:
        intro += f"<p role='note'><b>Content warning:</b> {esc(content_warning)}</p>"
    sections = [("What was done", f"<p>{esc(done)}</p>"),
                ("The arms", "<ul>" + "".join(f"<li><b>{esc(n)}</b>: {esc(a)}</li>" for n, a in arms.items()) + "</ul>"),
                ("Results", results + (img_html("trade-off plot", png) if png else "")),
                ("Paired differences against the reference", differences),
                ("Caveats", "<ul>" + "".join(f"<li>{esc(c)}</li>" for c in caveats) + "</ul>")]
    sections += examples
    sections.append(("Every generation", generations))
    links = "".join(f"<li><a href='{esc(f)}'>{esc(f)}</a>: {esc(what)}</li>" for f, what in files)
    sections.append(("Files and timings", (f"<p>Files beside this report:</p><ul>{links}</ul>" if links else "")
                     + table_html(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()])))
    return html_page(title, sections, intro=intro, scripts=[SORT_FILTER_JS], provenance=provenance)
