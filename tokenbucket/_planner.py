"""`BatchPlanner`: how many items to put in the next request, and why.

A request that covers ``n`` items costs about ``n × per-unit cost``. Too large a
batch either can never start (above ``capacity + overdraft``) or, with Keepa's
unlimited overdraft, starts at once and leaves every other job hours of debt.
The planner picks the largest batch whose estimated cost fits a budget (by
default one full bucket), never one that can never start, and says why in one
line. The arithmetic is in `plan_batch`, a pure function; the planner feeds it
the bucket's policy, its snapshot and the cost model's estimate.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._cost import CostModel
from ._exceptions import ConfigurationError, CostExceedsCapacity
from ._model import Policy, Snapshot
from ._validate import check_nonnegative, check_positive

__all__ = ["BatchPlan", "BatchPlanner", "plan_batch"]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The planner's decision for one request.

    Attributes:
        op: The operation.
        size: Items to put in the request (0 only when nothing is pending).
        pending: Items waiting when the plan was made.
        per_unit: The cost model's per-unit estimate used.
        estimated_cost: ``size × per_unit``.
        expected_wait: Seconds until a request of that cost may start, judged
            from the bucket's snapshot (other callers may add to it).
        budget: The most tokens one request was allowed to cost.
        explanation: One line saying why this size.
    """

    op: str
    size: int
    pending: int
    per_unit: float
    estimated_cost: float
    expected_wait: float
    budget: float
    explanation: str

    def __str__(self) -> str:
        return self.explanation


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 36000:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _start_wait(policy: Policy, snapshot: Snapshot, cost: float) -> float:
    level = policy.start_level(cost)
    return max(0.0, level - snapshot.tokens) / policy.refill


def _fits(size: int, per_unit: float, limit: float) -> int:
    """The largest ``n <= size`` with ``n × per_unit <= limit``."""
    if per_unit == 0:
        return size
    if limit < per_unit:  # not even one (a negative limit: a wait budget already spent)
        return 0
    n = min(size, int(min(limit / per_unit, float(size))))
    while n < size and (n + 1) * per_unit <= limit:
        n += 1
    while n > 0 and n * per_unit > limit:
        n -= 1
    return n


def plan_batch(
    op: str,
    pending: int,
    per_unit: float,
    policy: Policy,
    snapshot: Snapshot,
    *,
    budget: float,
    budget_label: str = "the budget",
    max_per_request: int = 100,
    fixed_size: int | None = None,
    also: Sequence[tuple[Policy, Snapshot, float]] = (),
) -> BatchPlan:
    """Plan one request: the pure arithmetic behind `BatchPlanner`.

    Guarantees: the planned cost never exceeds ``policy.max_cost`` (so the
    request can always start); with items pending the size is at least 1; the
    size never decreases when the budget grows. A bucket of several bandwidths
    passes the others in ``also``: the request must fit each, and starts when
    every one allows it.

    Args:
        op: The operation (for the explanation).
        pending: Items waiting.
        per_unit: Estimated cost of one item.
        policy: The bucket's policy.
        snapshot: The bucket's snapshot now.
        budget: The most one request should cost (clipped to ``policy.max_cost``).
        budget_label: How the explanation names the budget.
        max_per_request: The upstream's limit on items per request.
        fixed_size: Plan exactly this many (or fewer when fewer are pending).
        also: ``(policy, snapshot, budget)`` of each other bandwidth of the bucket.

    Raises:
        CostExceedsCapacity: a single item can never start.
    """
    bands = [(policy, snapshot), *((p, snap) for p, snap, _ in also)]
    max_cost = min(p.max_cost for p, _ in bands)
    limit = min(budget, policy.max_cost, *(min(b, p.max_cost) for p, _, b in also))
    cap = min(pending, max_per_request)
    refill = policy.refill
    unit = f"{per_unit:g}"
    everything = pending * per_unit
    whole = (
        f"all {pending} would be {pending} × {unit} = {everything:g} tokens = "
        f"{_duration(everything / refill)} of refill, {everything / policy.capacity:.1f} buckets"
    )
    if pending == 0:
        size = 0
        why = f"nothing pending for {op!r}"
    elif fixed_size is not None:
        size = min(fixed_size, cap)
        why = f"fixed batch of {size} {op!r}: {size} × {unit} = {size * per_unit:g} tokens"
    else:
        size = _fits(cap, per_unit, limit)
        if size == 0:
            if per_unit > max_cost:
                raise CostExceedsCapacity(per_unit, max_cost)
            size = 1
            why = (
                f"one {op!r} alone ({unit} tokens) exceeds {budget_label} ({limit:g} tokens); "
                "planning 1, the smallest batch"
            )
        elif size == pending:
            why = (
                f"all {pending} pending {op!r} fit: {size} × {unit} = {size * per_unit:g} tokens "
                f"<= {budget_label} ({limit:g} tokens)"
            )
        else:
            bound = "the upstream's limit per request" if size == max_per_request and size < pending else None
            reason = bound or f"{budget_label} ({limit:g} tokens)"
            why = (
                f"batch of {size} of {pending} pending {op!r}: "
                f"{size} × {unit} = {size * per_unit:g} tokens fits {reason}"
            )
            if everything > limit:
                why += f"; {whole}"
    cost = size * per_unit
    wait = max(_start_wait(p, snap, cost) for p, snap in bands) if size else 0.0
    if size:
        why += f"; expected start in {_duration(wait)}"
    return BatchPlan(op, size, pending, per_unit, cost, wait, limit, why)


class BatchPlanner:
    """Chooses batch sizes from a bucket's policy and snapshot and a `CostModel`.

    The budget for one request is, by default, one full bucket (``capacity``).
    Give ``max_cost`` to allow more or less, or ``max_wait`` to allow what the
    bucket holds now plus what refills within that many seconds (both: the
    smaller). The budget is always clipped to ``capacity + overdraft``, so a
    planned batch can always start.

    A ``fixed_size`` is checked at once against every operation the model
    knows (or those in ``ops``): a fixed batch that can never fit the budget is
    a `ConfigurationError` here, not a comment in the code.

    Args:
        bucket: A `TokenBucket` (use `plan`) or `AsyncTokenBucket` (use `aplan`).
        model: The cost model; default the bucket's ``cost_model``.
        max_cost: Budget in tokens per request.
        max_wait: Budget as seconds of refill on top of the current balance.
        fixed_size: Always plan this many items (fewer when fewer are pending).
        ops: Operations to check ``fixed_size`` against; default all the model knows.

    Raises:
        ConfigurationError: no cost model; a bad budget; a fixed size that can never fit.
    """

    def __init__(
        self,
        bucket: Any,
        model: CostModel | None = None,
        *,
        max_cost: float | None = None,
        max_wait: float | None = None,
        fixed_size: int | None = None,
        ops: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(getattr(bucket, "policy", None), Policy):
            raise TypeError(f"bucket must be a TokenBucket or AsyncTokenBucket, not {type(bucket).__name__}")
        if model is None:
            model = getattr(bucket, "cost_model", None)
        if not isinstance(model, CostModel):
            raise ConfigurationError("BatchPlanner needs a CostModel: pass model=, or give the bucket cost_model=")
        self._bucket = bucket
        self._model = model
        self.max_cost = None if max_cost is None else check_positive_or_inf("max_cost", max_cost)
        self.max_wait = None if max_wait is None else check_nonnegative("max_wait", max_wait)
        if fixed_size is not None:
            if isinstance(fixed_size, bool) or not isinstance(fixed_size, int):
                raise TypeError(f"fixed_size must be an int, not {type(fixed_size).__name__}")
            if fixed_size < 1:
                raise ConfigurationError(f"fixed_size must be at least 1, got {fixed_size!r}")
        self.fixed_size = fixed_size
        if fixed_size is not None:
            for op in model.operations() if ops is None else list(ops):
                self._check_fixed(op)

    @property
    def model(self) -> CostModel:
        """The cost model used."""
        return self._model

    def _budget(self, policy: Policy, tokens: float) -> tuple[float, str]:
        """The budget given the balance ``tokens``, and its name for explanations."""
        if self.max_cost is None and self.max_wait is None:
            return policy.capacity, "the budget of one full bucket"
        budget = math.inf
        label = ""
        if self.max_cost is not None:
            budget, label = self.max_cost, "max_cost"
        if self.max_wait is not None:
            by_wait = tokens + self.max_wait * policy.refill
            if by_wait < budget:
                budget, label = by_wait, f"what is there within max_wait {_duration(self.max_wait)}"
        return budget, label

    def _check_fixed(self, op: str) -> None:
        assert self.fixed_size is not None
        per_unit = self._model.per_unit(op)
        cost = self.fixed_size * per_unit
        for policy in self._bucket.policies:  # every bandwidth, at its best case: full
            self._check_fixed_in(op, policy, per_unit, cost)

    def _check_fixed_in(self, op: str, policy: Policy, per_unit: float, cost: float) -> None:
        assert self.fixed_size is not None
        budget, label = self._budget(policy, policy.capacity)
        limit = min(budget, policy.max_cost)
        if cost > limit:
            best = _fits(self.fixed_size, per_unit, limit)
            raise ConfigurationError(
                f"fixed_size={self.fixed_size} can never fit for {op!r}: {self.fixed_size} × {per_unit:g} = "
                f"{cost:g} tokens = {_duration(cost / policy.refill)} of refill, "
                f"{cost / policy.capacity:.1f} buckets, above {label} ({limit:g} tokens); "
                f"use at most {max(best, 1)}, or let BatchPlanner choose"
            )

    def _plan(self, op: str, pending: int, max_per_request: int, snapshot: Snapshot) -> BatchPlan:
        if isinstance(pending, bool) or not isinstance(pending, int):
            raise TypeError(f"pending must be an int, not {type(pending).__name__}")
        if pending < 0:
            raise ConfigurationError(f"pending must be zero or more, got {pending!r}")
        if isinstance(max_per_request, bool) or not isinstance(max_per_request, int):
            raise TypeError(f"max_per_request must be an int, not {type(max_per_request).__name__}")
        if max_per_request < 1:
            raise ConfigurationError(f"max_per_request must be at least 1, got {max_per_request!r}")
        if self.fixed_size is not None:
            self._check_fixed(op)
        per_unit = self._model.per_unit(op)
        # Each bandwidth with its budget; the one with the smallest budget names the plan.
        bands = [
            (policy, snap, *self._budget(policy, snap.tokens))
            for policy, snap in zip(self._bucket.policies, snapshot.bandwidths or (snapshot,), strict=True)
        ]
        first = min(range(len(bands)), key=lambda i: min(bands[i][2], bands[i][0].max_cost))
        policy, snap, budget, label = bands[first]
        return plan_batch(
            op,
            pending,
            per_unit,
            policy,
            snap,
            budget=budget,
            budget_label=label,
            max_per_request=max_per_request,
            fixed_size=self.fixed_size,
            also=[(p, s, b) for i, (p, s, b, _) in enumerate(bands) if i != first],
        )

    def plan(self, op: str, pending: int, max_per_request: int = 100) -> BatchPlan:
        """Plan the next request for ``op`` with ``pending`` items waiting.

        Reads the bucket's snapshot; changes nothing.

        Raises:
            TypeError: the bucket is an `AsyncTokenBucket` (use `aplan`).
            ConfigurationError: ``op`` is unknown to the model; a fixed size no longer fits
                (the model learned higher costs); a bad argument.
            CostExceedsCapacity: a single item can never start.
        """
        if inspect.iscoroutinefunction(self._bucket.snapshot):
            raise TypeError("this bucket is asynchronous: use `await planner.aplan(...)`")
        return self._plan(op, pending, max_per_request, self._bucket.snapshot())

    async def aplan(self, op: str, pending: int, max_per_request: int = 100) -> BatchPlan:
        """`plan` for either kind of bucket, awaiting the snapshot of an `AsyncTokenBucket`."""
        snapshot = self._bucket.snapshot()
        if inspect.isawaitable(snapshot):
            snapshot = await snapshot
        return self._plan(op, pending, max_per_request, snapshot)

    def __repr__(self) -> str:
        return (
            f"BatchPlanner({self._bucket!r}, max_cost={self.max_cost!r}, max_wait={self.max_wait!r}, "
            f"fixed_size={self.fixed_size!r})"
        )


def check_positive_or_inf(what: str, value: object) -> float:
    """A number greater than zero; infinity allowed."""
    number = check_nonnegative(what, value, allow_inf=True)
    if number == 0:
        check_positive(what, value)  # raises with the usual message
    return number
