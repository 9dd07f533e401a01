"""Cells as data. Gated cells with several carried states live in :mod:`mftrnn.cells.gated`; the single-state
cells (vanilla RNN, minimalRNN) in :mod:`mftrnn.cells.registry`. Both kinds share one registry (:func:`mftrnn.get_cell`)."""
from .gated import GRU, GRU_RESET_BEFORE, LSTM, LSTM_PEEPHOLE, Field, GatedCell, gate_hyperparameters

__all__ = ["Field", "GatedCell", "gate_hyperparameters", "LSTM", "GRU", "LSTM_PEEPHOLE", "GRU_RESET_BEFORE"]
