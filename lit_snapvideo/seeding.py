"""Seeds that are pure functions of integers: a step, a rank, an example's key, a sampling chunk.

g = seeded_generator(seed, step, rank)     # torch.Generator seeded with mix_seed(seed, step, rank)
"""

from __future__ import annotations

import torch


def mix_seed(*keys: int) -> int:
    """One seed that is a pure function of ``keys`` (e.g. seed, step, rank)."""
    value = 0
    for k in keys:
        value = (value * 1_000_003 + int(k)) % (2**63 - 1)
    return value


def seeded_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with :func:`mix_seed` of ``keys``."""
    return torch.Generator(device=device).manual_seed(mix_seed(*keys))
