"""Runs: checkpoints, per-image predictions, the one reader of a run directory, writing new run
directories, and the safety rules for what may be written or deleted there."""
