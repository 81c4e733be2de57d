"""Shared test settings: CPU only, offline, small thread count, deterministic seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub look-ups stall ~50 s each without network

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
