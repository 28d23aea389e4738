"""One exception type for mistakes the user can fix.

The CLI catches `UserError` and prints its message as a single line with a non-zero exit and no
traceback. Library callers get a normal exception they can catch.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line."""


def is_positive_int(value) -> bool:
    """An integer >= 1 (True is not a count, though Python calls it an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def flag_name(name: str) -> str:
    """The command-line flag of a setting's field name: batch_size -> --batch-size (what an error names)."""
    return "--" + name.replace("_", "-")
