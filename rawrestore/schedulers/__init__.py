"""Schedulers: the SDE and its sampling steps. No networks here (see rawrestore.models)."""
from .irsde import IRSDEScheduler, sample

__all__ = ["IRSDEScheduler", "sample"]
