"""Errors caused by the user's input, reported as one line without a traceback."""


class UserError(ValueError):
    """Bad input or configuration: the message names the problem and the fix."""
