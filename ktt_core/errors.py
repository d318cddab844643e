"""The one exception type that the CLI turns into a one-line error message."""


class KttError(Exception):
    """A problem with the user's input or environment.

    The message is shown to the user as one line, without a traceback, so it must say
    what is wrong and where (file, row, column, option) on its own.
    """
