"""User-facing errors: the CLI prints their message as one line and exits 2."""


class CultureError(Exception):
    """Bad input that the user can fix (unknown id, missing file, offline miss...)."""
