"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class NasError(Exception):
    """An error caused by user input or environment, reported without a traceback."""
