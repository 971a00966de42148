"""One exception type for every user-facing failure.

The CLI prints its message as a single line and exits non-zero, so each message must name the
culprit (file, key, value) and say what to do about it.
"""


class FgkdError(Exception):
    """A failure caused by input, configuration or environment, not by a bug in fgkd."""


class DataError(FgkdError):
    """A data set on disk is missing, malformed or inconsistent."""


def one_line(err: BaseException) -> str:
    """The message of an error, without the worker traceback that DataLoader wraps around it."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
