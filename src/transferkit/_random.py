"""Seeds derived from integers, and a block with seeded random generators: the two tools that make every random
choice in transferkit a function of ``(seed, epoch, item, ...)`` and so reproducible and resumable."""

from __future__ import annotations

import contextlib
import random

import numpy as np

__all__ = ["derive_seed", "seeded_rng"]


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (``SeedSequence`` mixing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Seed Python's, NumPy's and torch's CPU generators for a block, then restore them."""
    import torch

    py, npst, tst = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(tst)
