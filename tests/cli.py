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


def heavy_imports(argvs, modules, cwd=None):
    """Run each command line of ``argvs`` through ``culture-interp`` in one
    fresh interpreter; return (which of ``modules`` it imported, its stdout,
    its stderr)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import json, sys\n"
        "from culture_cli.main import main\n"
        f"for argv in {[list(a) for a in argvs]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        f"print('HEAVY=' + json.dumps(sorted(m for m in {tuple(modules)!r} if m in sys.modules)))\n"
    )
    root = cwd or Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    lines = [x for x in res.stdout.splitlines() if x.startswith("HEAVY=")]
    assert lines, res.stdout[-500:] + res.stderr[-800:]
    return json.loads(lines[-1][len("HEAVY="):]), res.stdout, res.stderr
