"""Benchmarks of tokenbucket against its peers.

Run everything with ``bash benchmarks/run.sh`` (it builds ``benchmarks/.venv``
with the pinned peers); ``--quick`` for tiny sizes, ``--only NAME`` for one
section. Every figure is the median of rounds taken in one process, with the
libraries interleaved round by round, and is reported as a ratio to ours.
"""

from __future__ import annotations

__all__: list[str] = []
