"""The ``culture-interp`` command line: thin Typer wrappers over ``culture``."""
