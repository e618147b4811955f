"""Errors caused by the user's input, reported as one line without a traceback."""

import errno


class UserError(ValueError):
    """Bad input or configuration: the message names the problem and the fix."""


# Faults of the file system a user can cause or meet, and what to do about each.
FILE_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free some space, or write the outputs elsewhere"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space, or write the outputs elsewhere"),
    errno.EACCES: ("permission denied", "make the folder writable for you, or write the outputs elsewhere"),
    errno.EPERM: ("the operation is not permitted", "make the folder writable for you, or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "write the outputs to a writable folder"),
}


def file_fault(error: OSError) -> UserError | None:
    """A file-system fault as one line naming the path and the fix, or None for other errors."""
    if error.errno not in FILE_FAULTS:
        return None
    problem, fix = FILE_FAULTS[error.errno]
    path = error.filename or "a file"
    return UserError(f"cannot write {path}: {problem}; {fix}")
