"""The one exception type that the CLI turns into a one-line error message."""


class KttError(Exception):
    """A problem with the user's input or environment.

    The message is shown to the user as one line, without a traceback, so it must say
    what is wrong and where (file, row, column, option) on its own.
    """


# Failures of the machine, not of KTT or its input: said in one line, naming the file.
_ENVIRONMENT_ERRNOS = {
    "ENOSPC": "no space left on the device",
    "EDQUOT": "disk quota exceeded",
    "EFBIG": "file too large for this file system or limit",
    "EROFS": "read-only file system",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "ENOTDIR": "a part of the path is a file, not a folder",
    "EMFILE": "too many open files",
    "ENAMETOOLONG": "file name too long",
}


def environment_error(exc: OSError) -> str | None:
    """A one-line message for an OSError caused by the environment (disk full, read-only, ...).

    None for other OSErrors, which are bugs and keep their traceback.
    """
    import errno

    name = errno.errorcode.get(exc.errno or -1)
    reason = _ENVIRONMENT_ERRNOS.get(name or "")
    if reason is None:
        return None
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where else f"{reason} ({exc.strerror or exc})"
