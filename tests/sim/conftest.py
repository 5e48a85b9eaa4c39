from __future__ import annotations

from pathlib import Path

import pytest

# tests/sim/conftest.py -> the checkout -> its parent, where shared/traces lives (here and in CI)
TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


@pytest.fixture(scope="session")
def traces() -> Path:
    assert (TRACES / "sensei-june-1-2-2021-sessions.json").is_file(), f"traces missing under {TRACES}"
    return TRACES
