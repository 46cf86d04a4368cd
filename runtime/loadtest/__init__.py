"""Load testing with locust: V2 HTTP and gRPC users (`runtime.loadtest.users`) and their inputs.

`runtime.loadtest.inputs` is plain numpy and safe anywhere. The users need the `loadtest` extra
(locust), and importing them monkey-patches the process for gevent, so they load lazily:
`from runtime.loadtest import V2HttpUser` (or `.users`) belongs in a locustfile only.
"""
from __future__ import annotations

from typing import Any

__all__ = ["V2GrpcUser", "V2HttpUser"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runtime.loadtest import users

        return getattr(users, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
