"""The one error type the command line turns into one line and exit status 2 (``cli.main``).

Every error that is the user's to fix (a config, a data set, a checkpoint, a command-line option) is a
:class:`UserError` whose message is one line naming the input and what was expected; the config, data and
checkpoint errors are its subclasses (and ValueErrors, for code that catches those).
"""


class UserError(Exception):
    """Bad input from the user: one line naming the input and what was expected."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line. An error raised in a DataLoader worker comes back with the worker's
    traceback inside its message; its last line holds the original message."""
    text = str(err).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
        text = last[len(prefix) :] if last.startswith(prefix) else last
    return " ".join(text.split("\n")).strip()
