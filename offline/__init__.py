"""Batch Solve-then-Learn: data conversion, the oracle solve, warm-start training and checks."""
