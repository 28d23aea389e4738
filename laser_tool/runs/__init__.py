"""Runs: each run file's schema, reader and writer (schema.py, state.py, checkpoints, per-image
predictions), the one reader of a run directory, writing new run directories, and the safety rules for
what may be written or deleted there. No module outside runs/ names a run file."""
