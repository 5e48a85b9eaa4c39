"""The seeded fault campaign (campaign.py): one fixed seed here; more with
`pytest tests/kernel/test_campaign.py --campaign-seeds 20 -s` (each prints its summary)."""

from __future__ import annotations

from pathlib import Path

import pytest

from notebookos.kernel.local import LocalKernel
from tests.kernel.campaign import campaign


def test_fault_campaign(tmp_path: Path, campaign_seed: int, pytestconfig: pytest.Config) -> None:
    k = LocalKernel(tmp_path / "kernel").start()
    try:
        (tmp_path / "marks").mkdir()
        s = campaign(k, tmp_path / "marks", campaign_seed, pytestconfig.getoption("--campaign-cells"))
    finally:
        k.stop()
    print(s.line())
    assert not s.violations, "\n".join([s.line(), *s.violations])
    assert s.cells >= 1 and s.ok >= 1
