"""toolkit: distill math reasoning into small models and ship them to CPUs and edge devices."""
from __future__ import annotations

__version__ = "0.1.0"
