"""Registry of the commands that live outside cli.py. Each entry is a click.Command."""
ALL = []
