"""Finite networks: PyTorch modules derived from a cell description, and finite-width simulators."""
