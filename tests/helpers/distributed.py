"""Shared by the distributed tests: helpers."""

from __future__ import annotations

from tests.helpers import ROOT

CONFIGS = sorted((ROOT / "deepspeed_configs").glob("*.json"))
