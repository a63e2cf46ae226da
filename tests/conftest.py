"""Shared fixtures: backends and front ends for the conformance suite."""

from __future__ import annotations
