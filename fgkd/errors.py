"""One exception type for every user-facing failure.

The CLI prints its message as a single line and exits non-zero, so each message must name the
culprit (file, key, value) and say what to do about it.
"""


class FgkdError(Exception):
    """A failure caused by input, configuration or environment, not by a bug in fgkd."""


# Set by distributed.launch for the processes it starts: the folder where each leaves its FgkdError's line, which the
# launcher prints once for all of them.
LAUNCHED_ERRORS = "FGKD_LAUNCHED_ERRORS"


class DataError(FgkdError):
    """A data set on disk is missing, malformed or inconsistent."""


def one_line(err: BaseException) -> str:
    """The message of an error on one line, without the worker traceback that DataLoader wraps around it."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def brief(err: BaseException) -> str:
    """The first line of a library's error (torch's and pyarrow's run to many lines), to quote inside ours."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0][:200]


def some(names: list[str], shown: int = 3) -> str:
    """The first few of many names, for a one-line message."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
