"""The command line (`laser-tool`): the Click group in main.py, one module per verb group."""
from .main import main

__all__ = ["main"]
