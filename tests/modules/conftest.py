"""Fixtures for the LightningModule tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (``tests/conftest.py``)."""
    yield
