"""The CI script, the README and the book's introduction must agree on the commands."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    return [b.strip() for b in blocks]


def test_readme_has_exactly_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    for cmd in cmds:
        assert "\n" not in cmd, "each command must be a single line"
    setup, test = cmds
    assert setup.startswith("python3 -m venv .venv")
    assert "jupyter-book build . -W" in setup
    assert "pytest" in test


def test_ci_runs_readme_commands_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    setup, test = readme_commands()
    assert f"SETUP_CMD='{setup}'" in ci
    assert f"TEST_CMD='{test}'" in ci
    assert "set -euo pipefail" in ci


def test_intro_shows_readme_commands():
    nb = json.loads((ROOT / "book" / "intro.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for cmd in readme_commands():
        assert cmd in text


def test_requirements_pin_torch_and_jupyter_book_v1():
    reqs = (ROOT / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in reqs
    assert any(r.startswith("jupyter-book") and "<2" in r for r in reqs)
