"""One exception type for bad input: the CLI prints its message as a single line, no traceback."""


class HarnessError(Exception):
    """A user-facing error whose message names the fix."""
