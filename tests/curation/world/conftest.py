"""The world tests' shared pool: the first 1,500 images of a seeded 5,000-image world, built once per session."""

import pyarrow as pa
import pytest

from curation.world.pool import generate_pool
from tests.curation.world.helpers import CFG


@pytest.fixture(scope="session")
def pool() -> tuple[pa.Table, pa.Table]:
    """(samples, truth) of images 0..1499."""
    return generate_pool(CFG, 0, 1500)
