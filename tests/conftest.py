import itertools

import jax
import pytest


jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh, deterministic PRNG key per call: `getkey()` (safe inside traced code)."""
    seeds = itertools.count(5678)
    return lambda: jax.random.key(next(seeds))
