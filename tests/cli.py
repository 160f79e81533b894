"""Running ``culture-interp`` in process, for the tests.

* :func:`exit_code` - the exit code of one command line (output left to pytest).
* :func:`run_cli` - (exit code, stdout, stderr) of one command line, read with capsys.
* :func:`error_line` - the one ``error: ...`` line of a command that must fail with exit code 2.
"""

from __future__ import annotations


def exit_code(argv) -> int:
    """The exit code of ``culture-interp argv`` (arguments pass through ``str``)."""
    from culture_cli.main import main

    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``culture-interp argv`` in process."""
    code = exit_code(argv)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(capsys, *argv) -> str:
    """The single stderr line of ``culture-interp argv``, which must exit with code 2."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]
