"""Batches that survive their files: each file decoded and developed in a supervised worker process,
each output claimed before it is developed and recorded when it is done.

- :mod:`.inputs`: the paths named by the user, checked (each bad one a reason, not an abort).
- :mod:`.develop`: :func:`develop_file`, one file from RAW to written output; what every engine calls.
- :mod:`.claims`: the claim file that makes one run, of any number, develop an output.
- :mod:`.manifest`: ``DST/.rawrestore/manifest.jsonl``, the record per output a rerun resumes from,
  and the digest of the settings that shape an output.
- :mod:`.worker` and :mod:`.engine`: the supervised, spawned worker processes.
"""
from .develop import FileResult, FileTask, WriteOptions, develop_file
from .engine import BatchError, BatchRequest, BatchResult, Events, Job, Limits, Outcome, run_batch
from .inputs import BadInput, collect_inputs
from .manifest import settings_digest

__all__ = ["BadInput", "BatchError", "BatchRequest", "BatchResult", "Events", "FileResult", "FileTask", "Job",
           "Limits", "Outcome", "WriteOptions", "collect_inputs", "develop_file", "run_batch", "settings_digest"]
