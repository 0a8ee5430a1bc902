"""Shared by the domain-adaptation tests: one torch thread (tiny models; threads only add overhead on 2 cores)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
