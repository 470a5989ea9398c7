from __future__ import annotations

import pytest


@pytest.fixture(params=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    """Run the test with input fed whole, then one byte at a time."""
    return bool(request.param == "bytewise")
