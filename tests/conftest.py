import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tests run on the real data sets; CI and developers keep them in ../shared/data.
os.environ.setdefault("IMLE_DATA_DIR", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["IMLE_DATA_DIR"]).resolve()
    if not (path / "mnist").is_dir():
        pytest.skip(f"real data not found under {path}; set IMLE_DATA_DIR")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # On a shared 2-core machine, 2 torch threads spin against other processes and run these
    # small workloads many times slower than 1 thread; results do not depend on it.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Keep the disk cache of reference statistics out of the user's home during tests.
    monkeypatch.setenv("IMLE_CACHE_DIR", str(tmp_path / "cache"))
