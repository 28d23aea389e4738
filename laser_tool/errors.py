"""One exception type for mistakes the user can fix.

The CLI catches `UserError` and prints its message as a single line with a non-zero exit and no
traceback. Library callers get a normal exception they can catch.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line."""
