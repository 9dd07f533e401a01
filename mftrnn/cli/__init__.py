"""The ``mftrnn`` command line: the parser and dispatch live in :mod:`mftrnn.cli.app`; experiment commands load their
modules (and torch) only when used."""
from .app import main

__all__ = ["main"]
