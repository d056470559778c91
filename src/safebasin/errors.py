"""Errors a user can fix, and the one boundary where every error becomes one printable line."""

MAX_MESSAGE = 600  # characters; a YAML alias bomb or a huge repr must not become a 14 MB "one-line" error


def one_line(message: object, limit: int = MAX_MESSAGE) -> str:
    """Whitespace folded to single spaces and the length capped, whatever a library put in the text."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


class UserError(Exception):
    """A mistake the user can fix. The CLI prints it as one line and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(one_line(message))


class Interrupted(UserError):
    """Ctrl-C: training stopped cleanly at a step boundary and left a resumable checkpoint."""

    exit_code = 130


def describe(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for any exception that reaches the CLI boundary."""
    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, RecursionError):
        return "input nested too deeply to read (a data or config file with deeply nested lists or objects?)", 2
    if isinstance(exc, MemoryError):
        return "out of memory (a very large input, batch or model?)", 2
    if isinstance(exc, OSError):  # the user's file system: a read-only dir, a full disk, a missing file
        where = f"{exc.filename}: " if exc.filename else ""
        return one_line(f"{where}{exc.strerror or exc}"), 2
    return one_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback, and please report it)"), 1
