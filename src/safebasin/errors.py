class UserError(Exception):
    """A mistake the user can fix. The CLI prints it as one line and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line, whatever a library put in it


class Interrupted(UserError):
    """Ctrl-C: training stopped cleanly at a step boundary and left a resumable checkpoint."""

    exit_code = 130
