"""Which version of a model holds each live sequence: one directory per model, shared by its versions.

A sequence finishes on the version it started on, so after a swap (or under a traffic split) a
request continuing a sequence goes where the sequence lives, not where routing would send a new
one; and a start for an id live on any version of the model is refused.
"""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")
Key = int | str


class SequenceDirectory(Generic[T]):
    def __init__(self) -> None:
        self._holders: dict[Key, T] = {}

    def holder(self, key: Key) -> T | None:
        return self._holders.get(key)

    def claim(self, key: Key, holder: T) -> None:
        self._holders[key] = holder

    def release(self, key: Key, holder: T) -> None:
        if self._holders.get(key) is holder:
            del self._holders[key]

    def __len__(self) -> int:
        return len(self._holders)
