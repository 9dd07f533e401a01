"""Experiments: one run harness (:mod:`mftrnn.experiments.harness`) shared by the training experiments."""
