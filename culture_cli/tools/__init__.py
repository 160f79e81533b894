"""Contributor tools (not part of the ``culture-interp`` command line)."""
