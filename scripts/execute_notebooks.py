"""Re-execute book notebooks in place, so that their committed outputs are fresh.

Usage (from the repository root, after the README's set-up command):

    .venv/bin/python scripts/execute_notebooks.py              # every book/*.ipynb
    .venv/bin/python scripts/execute_notebooks.py book/intro.ipynb

Each notebook runs from a clean kernel of *this* interpreter (jupyter_client
replaces the kernelspec's `python` by sys.executable), with the notebook's
folder as working directory and PYTHONHASHSEED=0, exactly as nbval (the test
suite) and the book build run it. Per-cell execution timestamps are dropped so
that re-running a notebook without changes gives no diff.
"""

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def execute(path: Path, timeout: int = 1200) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        coalesce_streams=True,
    )
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def main(argv=None) -> int:
    os.environ["PYTHONHASHSEED"] = "0"  # inherited by the kernel
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a).resolve() for a in args] or sorted((ROOT / "book").glob("*.ipynb"))
    for path in paths:
        print(f"executing {path.relative_to(ROOT)}", flush=True)
        execute(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
