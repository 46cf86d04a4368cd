"""Triton's ensembles: `platform: "ensemble"` with `ensemble_scheduling { step [...] }`, a DAG over
other served models.

`graph` wires the steps from the config alone (load errors naming the step); `composition` checks
them against the models they name when the ensemble loads; `backend` is what an ensemble version
has in place of sessions; `scheduler` runs one request through the steps, each through its model's
own engine path. This package imports neither the registry nor the engine: the registry hands it a
lookup, the engine its own infer.
"""
from __future__ import annotations

from runtime.ensemble.backend import EnsembleBackend
from runtime.ensemble.composition import Composing, Lookup, check, load_order
from runtime.ensemble.graph import Graph, Node, build, step_label
from runtime.ensemble.scheduler import count_request, run

__all__ = ["Composing", "EnsembleBackend", "Graph", "Lookup", "Node", "build", "check", "count_request", "load_order", "run", "step_label"]
