"""Launching a study's steps: the shared step runner (base.py), this machine (local.py), Slurm
(slurm.py), the one dispatcher (execute.py), and the live table and `--status` (table.py, status.py)."""
