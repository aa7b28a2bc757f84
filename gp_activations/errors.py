"""Errors that are the user's fault.

Anything raised as a :class:`UserError` reaches the command line as exactly one line on
stderr and exit status 2 -- no traceback.  Library code raises it for bad input (an
unknown name, a malformed expression, a missing dataset directory); genuine bugs stay
ordinary exceptions so that they keep their tracebacks.
"""


class UserError(Exception):
    """Bad input: the message says what is wrong, where, and how to fix it."""

    exit_code = 2


class ExpressionError(UserError, ValueError):
    """A malformed activation expression; ``position`` is the 0-based character offset."""

    def __init__(self, message, text=None, position=None):
        self.text = text
        self.position = position
        if position is not None:
            message = f"{message} (at position {position})"
        super().__init__(message)


def did_you_mean(word, choices) -> str:
    """``"; did you mean 'population'?"`` for a near miss among ``choices``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
