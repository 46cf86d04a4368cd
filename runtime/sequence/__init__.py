"""Triton's sequence batcher: stateful models whose requests belong to sequences (runtime/sequence/batcher.py),
the request's sequence parameters (request.py), control and implicit-state tensors (tensors.py), and the
per-model directory of live sequences that keeps a sequence on the version it started on (directory.py)."""
from runtime.sequence.batcher import SequenceBatcher, SequenceLimit, SequenceStats
from runtime.sequence.directory import SequenceDirectory
from runtime.sequence.request import SequenceTag, sequence_tag
from runtime.sequence.tensors import Feeds

__all__ = ["Feeds", "SequenceBatcher", "SequenceDirectory", "SequenceLimit", "SequenceStats", "SequenceTag", "sequence_tag"]
