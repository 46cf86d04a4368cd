"""Triton's response cache (the `local` cache): answers to requests equal to earlier ones, from memory.

A version caches when its config says `response_cache { enable: true }` and the server was started
with `--cache-config local,size=BYTES`. The engine looks a request up after validation, before any
queueing or execution, and inserts the answer after a success (failures are never cached).

Key: blake2b (128 bits) of the key material: the version's identity (model name, version number and
a token unique to the loaded version object, so a version that is reloaded or swapped never answers
from its predecessor's entries), each input's name, datatype, shape and bytes, the requested outputs
with their classification counts, and the request parameters that can change the answer (all but
priority and timeout, which only schedule). The material is kept with the entry and compared on a
hit, so a hash collision is a miss, never someone else's answer.

Eviction is LRU within the byte budget: an entry costs its key material, its output bytes and a fixed
overhead; one larger than the whole budget is not stored. A version's entries are dropped when the
version object is freed (after an unload or a swap has drained it); until then they can only be hit
by requests routed to that same version.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from runtime.config import cache_size_bytes
from runtime.types import Array, InferRequest, RequestedOutput

# Parameters that change when and whether a request runs, never its answer.
SCHEDULING_PARAMETERS = frozenset({"priority", "timeout"})
ENTRY_OVERHEAD_BYTES = 256  # dict slots, the entry object, the digest: a rough, fixed charge
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class CacheKey:
    digest: bytes
    material: bytes


@dataclass(slots=True)
class _Entry:
    material: bytes
    outputs: dict[str, Array]
    nbytes: int
    owner: int  # the version's token


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    insertions: int = 0
    evictions: int = 0


class ResponseCache:
    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.used_bytes = 0
        self.stats = CacheStats()
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()  # oldest use first
        self._tokens: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._owned: dict[int, set[bytes]] = {}
        self._next_token = itertools.count(1)

    @classmethod
    def configured(cls, text: str | None) -> ResponseCache | None:
        """The cache `--cache-config` asks for (Settings.cache_config), or None."""
        size = cache_size_bytes(text)
        return cls(size) if size else None

    def __len__(self) -> int:
        return len(self._entries)

    # ---- keys --------------------------------------------------------------------------------

    def key(
        self,
        version: Any,  # the loaded version object (runtime.model.ServedModel): weakly referenced
        name: str,
        number: int,
        inputs: Mapping[str, Array],
        requested: Sequence[RequestedOutput] | None,
        parameters: Mapping[str, Any],
    ) -> CacheKey:
        parts: list[bytes] = [b"%d\0%s\0%d\0" % (self._token(version), name.encode(), number)]
        for input_name, array in inputs.items():
            parts.append(b"i%s\0%s\0%s\0" % (input_name.encode(), array.dtype.str.encode(), repr(array.shape).encode()))
            if array.dtype == object:
                for item in array.reshape(-1):
                    raw = item if isinstance(item, bytes) else str(item).encode()
                    parts.append(_LENGTH.pack(len(raw)))
                    parts.append(raw)
            else:
                raw = np.ascontiguousarray(array).tobytes()
                parts.append(_LENGTH.pack(len(raw)))
                parts.append(raw)
        if requested:
            for output in requested:
                parts.append(b"o%s\0%d\0" % (output.name.encode(), output.classification))
        else:
            parts.append(b"o*\0")  # every output
        answer_changing = sorted((k, repr(v)) for k, v in parameters.items() if k not in SCHEDULING_PARAMETERS)
        if answer_changing:
            parts.append(b"p" + repr(answer_changing).encode())
        material = b"".join(parts)
        return CacheKey(hashlib.blake2b(material, digest_size=16).digest(), material)

    def _token(self, version: Any) -> int:
        token = self._tokens.get(version)
        if token is None:
            token = next(self._next_token)
            self._tokens[version] = token
            # Its entries go when it does: nothing can hit them after that.
            weakref.finalize(version, self._drop_owner, token)
        return token

    # ---- lookup and insertion ----------------------------------------------------------------

    def get(self, key: CacheKey) -> dict[str, Array] | None:
        entry = self._entries.get(key.digest)
        if entry is None or entry.material != key.material:  # a collision is a miss
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key.digest)
        self.stats.hits += 1
        return dict(entry.outputs)

    def put(self, key: CacheKey, outputs: Mapping[str, Array]) -> bool:
        """Store a successful answer (copied, read-only); False when it alone exceeds the budget."""
        stored: dict[str, Array] = {}
        nbytes = ENTRY_OVERHEAD_BYTES + len(key.material)
        for output_name, array in outputs.items():
            copy = np.array(array, copy=True)
            copy.flags.writeable = False  # handed to every later hit: nobody may change it
            stored[output_name] = copy
            nbytes += copy.nbytes + (sum(len(x) for x in copy.reshape(-1) if isinstance(x, bytes)) if copy.dtype == object else 0)
        if nbytes > self.size_bytes:
            return False
        old = self._entries.pop(key.digest, None)
        if old is not None:
            self._forget(key.digest, old)
        while self._entries and self.used_bytes + nbytes > self.size_bytes:
            digest, evicted = self._entries.popitem(last=False)
            self._forget(digest, evicted)
            self.stats.evictions += 1
        owner = self._owner_of(key)
        self._entries[key.digest] = _Entry(key.material, stored, nbytes, owner)
        self._owned.setdefault(owner, set()).add(key.digest)
        self.used_bytes += nbytes
        self.stats.insertions += 1
        return True

    @staticmethod
    def _owner_of(key: CacheKey) -> int:
        return int(key.material[: key.material.index(b"\0")])  # the material starts with the token

    def _forget(self, digest: bytes, entry: _Entry) -> None:
        self.used_bytes -= entry.nbytes
        owned = self._owned.get(entry.owner)
        if owned is not None:
            owned.discard(digest)
            if not owned:
                del self._owned[entry.owner]

    def _drop_owner(self, token: int) -> None:
        for digest in self._owned.pop(token, set()):
            entry = self._entries.pop(digest, None)
            if entry is not None:
                self.used_bytes -= entry.nbytes

    def drop(self, version: Any) -> None:
        """Forget every answer of that version now (its entries would otherwise go when it is freed)."""
        token = self._tokens.get(version)
        if token is not None:
            self._drop_owner(token)


# ---- the engine's two calls ---------------------------------------------------------------------


class _Duration(Protocol):
    def add(self, ns: int, count: int = 1) -> None: ...


class _Stats(Protocol):
    @property
    def success(self) -> _Duration: ...
    @property
    def cache_hit(self) -> _Duration: ...
    @property
    def cache_miss(self) -> _Duration: ...


class _Spec(Protocol):
    @property
    def response_cache(self) -> bool: ...


class CachingVersion(Protocol):
    """What the cache needs of a loaded version (runtime.model.ServedModel)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def config(self) -> _Spec: ...
    @property
    def stats(self) -> _Stats: ...


def lookup(
    cache: ResponseCache | None, served: CachingVersion, request: InferRequest, inputs: Mapping[str, Array]
) -> tuple[CacheKey | None, dict[str, Array] | None]:
    """(key, cached outputs) for a validated request; (None, None) when the version does not cache,
    or the request continues a sequence (its answer depends on state). Counts Triton's cache_hit /
    cache_miss (key and lookup time); a hit also counts as a success, as in Triton."""
    if cache is None or not served.config.response_cache or "sequence_id" in request.parameters:
        return None, None
    started = time.perf_counter_ns()
    key = cache.key(served, served.name, served.version, inputs, request.requested_outputs, request.parameters)
    outputs = cache.get(key)
    elapsed = time.perf_counter_ns() - started
    if outputs is None:
        served.stats.cache_miss.add(elapsed)
    else:
        served.stats.cache_hit.add(elapsed)
        served.stats.success.add(elapsed)
    return key, outputs


def store(cache: ResponseCache | None, served: CachingVersion, key: CacheKey | None, outputs: Mapping[str, Array]) -> None:
    """Insert a successful answer; its time counts to the miss that made it (Triton's cache_miss)."""
    if cache is None or key is None:
        return
    started = time.perf_counter_ns()
    cache.put(key, outputs)
    served.stats.cache_miss.add(time.perf_counter_ns() - started, count=0)
