"""Errors that are the user's fault.

Anything raised as a :class:`UserError` reaches the command line as exactly one line on
stderr and exit status 2 -- no traceback.  Library code raises it for bad input (an
unknown name, a malformed expression, a missing dataset directory); genuine bugs stay
ordinary exceptions so that they keep their tracebacks.
"""

import errno as _errno


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


def unknown_keys(given, known) -> list:
    """The keys of ``given`` not in ``known``, sorted (the first one is the one to name)."""
    return sorted(set(given) - set(known))


# ---------------------------------------------------------------------------------------------
# Files and directories: what went wrong with a path, in one line, with what to do about it
# ---------------------------------------------------------------------------------------------
#: errno -> (verb, how to fix); the verb says what the tool could not do with the path.
_OS_HINTS = {
    _errno.EROFS: ("write", "the file system is read-only; choose a location on writable "
                   "storage"),
    _errno.ENOSPC: ("write", "the disk is full; free some space and run the command again "
                    "(finished work is kept)"),
    _errno.EDQUOT: ("write", "the disk quota is exhausted; free some space and run the command "
                    "again (finished work is kept)"),
    _errno.EACCES: ("access", "permission denied; check its permissions or choose another "
                    "location"),
    _errno.EPERM: ("access", "operation not permitted; check its permissions or choose another "
                   "location"),
    _errno.EISDIR: ("write", "a directory is in the way where a file is expected; give a file "
                    "path or move the directory"),
    _errno.ENOTDIR: ("use", "a file is in the way where a directory is expected; move the file "
                     "or choose another path"),
    _errno.EEXIST: ("create", "a file is in the way where a directory is expected; move the "
                    "file or choose another path"),
    _errno.ENOENT: ("open", "no such file or directory; check the path"),
    _errno.ENAMETOOLONG: ("use", "the path is too long; choose a shorter one"),
}

#: OSErrors that are about the user's files or disk, not a bug (see :func:`is_path_error`).
PATH_ERRNOS = frozenset(_OS_HINTS)


def is_path_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError about a path or the disk (read-only media, a file where a
    directory belongs, a full disk ...) -- the user's to fix -- rather than a bug."""
    return isinstance(exc, OSError) and (exc.errno in PATH_ERRNOS or (
        exc.filename is not None and exc.errno is not None))


def os_error_message(exc: OSError, path=None, verb=None, fix=None) -> str:
    """``cannot write PATH: Read-only file system (the file system is read-only; ...)``;
    ``fix`` replaces the hint in the parentheses."""
    where = exc.filename if exc.filename is not None else path
    default_verb, hint = _OS_HINTS.get(exc.errno, ("use", ""))
    hint = fix or hint
    reason = exc.strerror or str(exc) or type(exc).__name__
    text = f"cannot {verb or default_verb}"
    if where is not None:
        text += f" {where}"
    text += f": {reason}"
    if exc.filename2 is not None:
        text += f" (-> {exc.filename2})"
    return text + (f" ({hint})" if hint else "")


def check_writable(path, kind: str = "dir", what: str = "", fix=None) -> None:
    """Raise a one-line :class:`UserError` now if ``path`` cannot be written as a ``kind``
    ("dir" or "file") -- before any work is done.  Nothing is created: an existing directory
    (or the nearest existing parent of a missing path) is probed with a temporary file that
    is removed at once.  ``what`` names the path's role, e.g. "--out"; ``fix`` says what to do
    when the path cannot be written (read-only media, no permission)."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path).expanduser()
    label = f"{what} {path}" if what else str(path)
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise UserError(f"cannot write {label}: it is a file, not a directory (move the file "
                            f"or choose another path)")
        if kind == "file" and path.is_dir():
            raise UserError(f"cannot write {label}: it is a directory, not a file (give a file "
                            f"path or move the directory)")
        probe_in = path if kind == "dir" else path.parent
    else:
        probe_in = path.parent
        while not probe_in.exists() and probe_in != probe_in.parent:
            probe_in = probe_in.parent
        if not probe_in.is_dir():
            raise UserError(f"cannot write {label}: {probe_in} is a file, not a directory (move "
                            f"the file or choose another path)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gp-activations-probe-", dir=probe_in)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        exc.filename = None  # name the path the user gave, not the probe
        raise UserError(os_error_message(exc, label, verb="write", fix=fix)) from None


def unicode_error_message(exc: UnicodeDecodeError, path=None) -> str:
    """``PATH is not UTF-8 text: byte 0xe9 at position 20 ... (save it as UTF-8)``."""
    bad = exc.object[exc.start:exc.start + 1] if isinstance(exc.object, (bytes, bytearray)) else b""
    byte = f"byte 0x{bad.hex()} at position {exc.start}" if bad else f"position {exc.start}"
    where = f"{path} is" if path is not None else "a file is"
    return (f"{where} not UTF-8 text: {byte} is not valid {exc.encoding} ({exc.reason}); "
            f"save it as UTF-8")
