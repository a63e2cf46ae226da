"""`CostModel`: what a call will cost, learned from what calls did cost.

An upstream like Keepa charges per item, and the charge for an item varies
(offers found, stock, freshness). A `CostModel` keeps, per operation, a sliding
window of recent per-unit costs and estimates high: by default the largest
per-unit cost in the window, so an estimate is never below what the recent
calls really cost. Until ``warmup`` observations exist the prior you give
counts too, so a fresh model starts where you told it.

Observations live in a `CostStore`. The default, `MemoryCostStore`, is private
to one process; `RedisCostStore` keeps the windows in one Redis hash so every
worker on every host learns from every call.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any, Protocol, runtime_checkable

from ._exceptions import BackendError, ConfigurationError
from ._validate import check_nonnegative, check_positive

__all__ = ["CostModel", "CostStore", "MemoryCostStore", "RedisCostStore"]

_FORMAT = "tokenbucket.CostModel/1"


def _check_op(op: object) -> str:
    if not isinstance(op, str):
        raise TypeError(f"op must be a string naming an operation, not {type(op).__name__}")
    if not op:
        raise ConfigurationError("op must not be empty")
    return op


def _check_units(units: object, *, positive: bool = False) -> float:
    value = check_nonnegative("units", units)
    if positive and value == 0:
        raise ConfigurationError("units must be greater than zero to learn a per-unit cost")
    return value


def _check_int(what: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < low:
        raise ConfigurationError(f"{what} must be at least {low}, got {value!r}")
    return value


@runtime_checkable
class CostStore(Protocol):
    """Where a `CostModel` keeps its observations: per operation, the recent per-unit costs.

    Both methods are atomic with respect to every other user of the store.
    A store shared between processes makes every worker learn together.
    """

    def append(self, op: str, per_unit: float, window: int) -> list[float]:
        """Add one per-unit cost to ``op``'s window, keep the last ``window``, and return them (oldest first)."""
        ...

    def load(self) -> dict[str, list[float]]:
        """Every operation's window (oldest first)."""
        ...


class MemoryCostStore:
    """Observations in this process, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}

    def append(self, op: str, per_unit: float, window: int) -> list[float]:
        """See `CostStore.append`."""
        with self._lock:
            values = self._windows.setdefault(op, [])
            values.append(per_unit)
            del values[:-window]
            return list(values)

    def load(self) -> dict[str, list[float]]:
        """See `CostStore.load`."""
        with self._lock:
            return {op: list(values) for op, values in self._windows.items()}


@contextlib.contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    """Translate Redis failures into `BackendError` (the one place this module does so)."""
    from redis.exceptions import RedisError  # the store exists only when redis is installed

    try:
        yield
    except RedisError as exc:
        raise BackendError(f"cost store {what} failed: {exc}") from exc


class RedisCostStore:
    """Observations in one Redis hash, shared by every worker that uses the same key.

    Each field of the hash is an operation; its value is a JSON list of the
    recent per-unit costs. Appending is one Lua script, so concurrent workers
    never lose an observation.

    The hash expires ``ttl`` seconds after the last observation (renewed by
    every append), so an abandoned model leaves no key behind for ever.

    The store is synchronous: used by an `AsyncTokenBucket`, each observe (at
    a settle) and each refresh is one short blocking round trip to Redis.

    Args:
        client: A synchronous ``redis.Redis`` client (``decode_responses`` either way).
        key: The hash's key.
        ttl: Seconds the hash lives after the last observation; None for no expiry.

    Raises:
        BackendError: (from the methods) Redis failed; the cause is attached.
    """

    def __init__(self, client: Any, key: str = "tb:costs", *, ttl: float | None = 7 * 86400.0) -> None:
        if not callable(getattr(client, "register_script", None)):
            raise TypeError(f"client must be a redis.Redis client, not {type(client).__name__}")
        if not isinstance(key, str) or not key:
            raise ConfigurationError("key must be a non-empty string")
        self._client = client
        self.key = key
        self.ttl = None if ttl is None else check_positive("ttl", ttl)
        self._ttl_ms = 0 if self.ttl is None else max(1, round(self.ttl * 1000))
        script = resources.files("tokenbucket").joinpath("backends/lua/cost_append.lua")
        source = script.read_text(encoding="utf-8")
        self._append = client.register_script(source)

    def append(self, op: str, per_unit: float, window: int) -> list[float]:
        """See `CostStore.append`."""
        with _redis_errors("append"):
            raw = self._append(keys=[self.key], args=[op, repr(float(per_unit)), window, self._ttl_ms])
        return _decode_window(raw)

    def load(self) -> dict[str, list[float]]:
        """See `CostStore.load`."""
        with _redis_errors("load"):
            raw = self._client.hgetall(self.key)
        windows: dict[str, list[float]] = {}
        for field, value in raw.items():
            op = field.decode() if isinstance(field, bytes) else str(field)
            windows[op] = _decode_window(value)
        return windows

    def __repr__(self) -> str:
        return f"RedisCostStore(key={self.key!r})"


def _decode_window(raw: object) -> list[float]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    values = json.loads(text)
    if not isinstance(values, list):  # cjson encodes an empty table as {}
        return []
    return [float(v) for v in values]


class CostModel:
    """Per-operation, per-unit cost estimates that learn from observed costs.

    The estimate is conservative: the ``quantile`` (default 1.0, the maximum)
    of the last ``window`` per-unit costs observed for the operation. With the
    default it is never below any of those recent costs. Until ``warmup``
    observations exist (or the window is full, if smaller), the prior is
    included too (as the larger of the two).

    Thread-safe. Without ``store`` the observations stay in this model. With a
    store (shared by other models or processes), ``estimate`` re-reads every
    operation's window at most once per ``refresh`` seconds, and ``observe``
    writes through at once.

    Args:
        prior: Starting per-unit costs, for example ``{"product": 20}``.
        window: How many recent observations each operation keeps.
        quantile: Which quantile of the window to use, in (0, 1]; 1 is the maximum.
        warmup: Observations needed before the prior stops counting.
        store: Where observations live; default a private `MemoryCostStore`.
        refresh: With a shared store, the most seconds between re-reads of it.

    Raises:
        ConfigurationError: a value can never work (negative prior, quantile 0, ...).
        TypeError: a value has the wrong type.

    For example:

        model = CostModel(prior={"product": 20})
        model.estimate("product", 10)            # 200.0
        model.observe("product", 10, actual=150)  # learns 15 per unit
    """

    def __init__(
        self,
        prior: Mapping[str, float] | None = None,
        *,
        window: int = 20,
        quantile: float = 1.0,
        warmup: int = 3,
        store: CostStore | None = None,
        refresh: float = 5.0,
    ) -> None:
        if prior is None:
            prior = {}
        if not isinstance(prior, Mapping):
            raise TypeError(f"prior must be a mapping of operation to per-unit cost, not {type(prior).__name__}")
        self._prior = {_check_op(op): check_nonnegative(f"prior[{op!r}]", cost) for op, cost in prior.items()}
        self.window = _check_int("window", window, 1)
        q = check_nonnegative("quantile", quantile)
        if not 0 < q <= 1:
            raise ConfigurationError(f"quantile must be in (0, 1], got {quantile!r}")
        self.quantile = q
        self.warmup = _check_int("warmup", warmup, 0)
        if store is not None and not isinstance(store, CostStore):
            raise TypeError(f"store must have append() and load(), not {type(store).__name__}")
        self._shared = store is not None
        self._store: CostStore = MemoryCostStore() if store is None else store
        self.refresh = check_nonnegative("refresh", refresh)
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}
        self._loaded_at = -math.inf
        if store is not None:
            self._load()

    @property
    def prior(self) -> dict[str, float]:
        """The starting per-unit costs (a copy)."""
        return dict(self._prior)

    @property
    def store(self) -> CostStore:
        """Where the observations live."""
        return self._store

    def _load(self) -> None:
        windows = self._store.load()
        with self._lock:
            self._windows = windows
            self._loaded_at = time.monotonic()

    def _window(self, op: str) -> list[float]:
        if self._shared and time.monotonic() - self._loaded_at > self.refresh:
            self._load()
        return self._windows.get(op, [])

    def operations(self) -> list[str]:
        """Every operation with a prior or an observation, sorted."""
        if self._shared:
            self._window("")
        return sorted(set(self._prior) | set(self._windows))

    def __contains__(self, op: object) -> bool:
        return isinstance(op, str) and op in self.operations()

    def per_unit(self, op: str) -> float:
        """The conservative per-unit cost of ``op``.

        Raises:
            ConfigurationError: ``op`` has no prior and nothing was observed for it.
        """
        op = _check_op(op)
        values = self._window(op)
        prior = self._prior.get(op)
        if not values:
            if prior is None:
                known = ", ".join(repr(o) for o in sorted(self._prior)) or "none"
                raise ConfigurationError(
                    f"no cost known for operation {op!r}: give it a prior, e.g. CostModel(prior={{{op!r}: 20}}), "
                    f"or observe it first (operations with a prior: {known})"
                )
            return prior
        ordered = sorted(values)
        rank = max(1, math.ceil(self.quantile * len(ordered)))
        learned = ordered[rank - 1]
        if prior is not None and len(values) < min(self.warmup, self.window):
            return max(prior, learned)
        return learned

    def estimate(self, op: str, units: float = 1) -> float:
        """The conservative cost of a call of ``op`` on ``units`` units: ``per_unit(op) * units``.

        Raises:
            ConfigurationError: ``op`` is unknown (no prior, no observation), or
                ``units`` is negative, NaN or infinite.
        """
        n = _check_units(units)
        return self.per_unit(op) * n

    def observe(self, op: str, units: float, actual: float) -> float:
        """Learn from one call: ``op`` on ``units`` units really cost ``actual``.

        Returns:
            The new per-unit estimate for ``op``.

        Raises:
            ConfigurationError: ``units`` is not greater than zero, or ``actual``
                is negative, NaN or infinite (nothing is recorded).
            BackendError: a shared store failed (nothing is recorded locally).
        """
        op = _check_op(op)
        n = _check_units(units, positive=True)
        cost = check_nonnegative("actual", actual)
        values = self._store.append(op, cost / n, self.window)
        with self._lock:
            self._windows[op] = values
        return self.per_unit(op)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: settings, priors and the observations windows."""
        if self._shared:
            self._load()
        with self._lock:
            observations = {op: list(values) for op, values in sorted(self._windows.items())}
        return {
            "format": _FORMAT,
            "prior": dict(sorted(self._prior.items())),
            "window": self.window,
            "quantile": self.quantile,
            "warmup": self.warmup,
            "observations": observations,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, store: CostStore | None = None) -> CostModel:
        """Rebuild a model from `to_dict` output; the observations are appended to ``store``.

        Raises:
            ConfigurationError: ``data`` is not a `to_dict` description, or holds bad values.
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ConfigurationError(f"not a CostModel description (expected format {_FORMAT!r})")
        observations = data.get("observations", {})
        if not isinstance(observations, Mapping) or not all(isinstance(v, list) for v in observations.values()):
            raise ConfigurationError("observations must map each operation to a list of per-unit costs")
        try:
            model = cls(
                data.get("prior", {}),
                window=data.get("window", 20),
                quantile=data.get("quantile", 1.0),
                warmup=data.get("warmup", 3),
                store=store,
            )
        except TypeError as exc:
            raise ConfigurationError(f"bad CostModel description: {exc}") from exc
        checked = {
            _check_op(op): [check_nonnegative(f"observation of {op!r}", v) for v in values]
            for op, values in observations.items()
        }
        for op, values in checked.items():
            for value in values[-model.window :]:
                model._windows[op] = model._store.append(op, value, model.window)
        return model

    def to_json(self) -> str:
        """`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, store: CostStore | None = None) -> CostModel:
        """Rebuild a model from `to_json` output.

        Raises:
            ConfigurationError: the text is not JSON, or not a `to_json` description.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"not a CostModel description: {exc}") from exc
        return cls.from_dict(data, store=store)

    def __repr__(self) -> str:
        return (
            f"CostModel(prior={self._prior!r}, window={self.window}, quantile={self.quantile:g}, "
            f"warmup={self.warmup}, store={type(self._store).__name__})"
        )
