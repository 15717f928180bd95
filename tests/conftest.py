"""Shared test settings: CPU only, few threads, deterministic."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
