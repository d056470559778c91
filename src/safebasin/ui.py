"""The terminal: one rich console (stderr) and one progress-bar style for every long step.

Text from users and data (paths, bench names, model outputs) is never read as rich markup:
a path like `runs/[exp1]` must print as itself, and `[/x]` must not crash the run after its work.
"""

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)  # progress, logs, errors
out = Console()  # tables and reports: stdout, so they can be piped


def say(message: str, *, tag: str | None = None, style: str = "green") -> None:
    """One status line on stderr; `message` is printed literally, only the tag is styled."""
    prefix = f"[{style}]{tag}:[/{style}] " if tag else ""
    console.print(prefix + escape(message), highlight=False, soft_wrap=True)


def progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}", markup=False),
        console=console, transient=transient,
    )


class LiteralTable(Table):
    """A rich Table whose string cells are shown as written (a bench named `x[/b]` must not crash it)."""

    def add_row(self, *cells, **kwargs) -> None:
        super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)
