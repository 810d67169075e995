"""Registers the gpu marker so these tests run standalone (the project config may register it too)."""
from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
