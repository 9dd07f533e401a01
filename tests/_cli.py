"""Helpers shared by the command-line tests: run ``mftrnn.cli.app.main`` in-process, check one-line errors."""
from __future__ import annotations

from mftrnn.cli.app import main


def run_cli(capsys, *argv):
    """``main(argv)`` with captured output: ``(exit status, stdout, stderr)``."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, *, empty_stdout=False):
    """Bad input: non-zero status, one line ``mftrnn: error: ...`` on stderr, no traceback, no NaN printed."""
    assert rc != 0
    assert "Traceback" not in err and "Traceback" not in out
    if empty_stdout:
        assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mftrnn: error: "), err
    assert "nan" not in out.lower()
