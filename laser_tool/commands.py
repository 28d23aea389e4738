"""Registry of the commands that live outside cli.py. Each entry is a click.Command."""
from .cmd_compare import compare, study
from .cmd_reduce import reduce_cmd, search_cmd, spectrum_cmd
from .cmd_train import train

ALL = [train, compare, study, reduce_cmd, search_cmd, spectrum_cmd]
