"""Shared test setup: TVM gets both cores, torch the same, and one differential helper."""
import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
