class UserError(Exception):
    """A mistake the user can fix. The CLI prints it as one line and exits with code 2."""
