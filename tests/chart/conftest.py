"""The real helm binary (from e2e/toolchain, never skipped), for every chart test."""

from __future__ import annotations

import pytest

from e2e.testbed.cluster import toolchain_dir


@pytest.fixture(scope="session")
def helm() -> str:
    path = toolchain_dir() / "bin" / "helm"
    assert path.exists(), f"{path} missing: run `make toolchain` (e2e/toolchain/build.sh builds helm)"
    return str(path)
