import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests run on the real data sets; CI and developers keep them in ../shared/data.
os.environ.setdefault("IMLE_DATA_DIR", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["IMLE_DATA_DIR"])
    if not (path / "mnist").is_dir():
        pytest.skip(f"real data not found under {path}; set IMLE_DATA_DIR")
    return path
