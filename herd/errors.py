"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class HerdError(Exception):
    """A user-facing error: bad input, a missing or malformed file, an unknown name."""
