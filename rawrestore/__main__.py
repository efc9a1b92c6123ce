"""``python -m rawrestore``: the same command line as the ``rawrestore`` script."""
from .cli import run

run()
