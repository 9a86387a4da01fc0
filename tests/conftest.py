import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never write to the user's MLflow store unless they ask for it.
os.environ.setdefault("LIBRARM_TRACKING", "0")


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def params():
    from librarm.config import load_params

    return load_params(REPO / "params.yaml")


def needs_shared_data():
    return pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
