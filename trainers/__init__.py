"""The training loop, optimiser and schedule, and distributed set-up for laser-tool."""
