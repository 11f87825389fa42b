"""A named array space: what one observation or action key holds."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Space:
    shape: tuple
    dtype: np.dtype
    low: float | np.ndarray | None = None
    high: float | np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(x) for x in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.low is None:
            object.__setattr__(self, "low", _default_bound(self.dtype, low=True))
        if self.high is None:
            object.__setattr__(self, "high", _default_bound(self.dtype, low=False))

    @property
    def discrete(self) -> bool:
        return np.issubdtype(self.dtype, np.integer) or self.dtype == bool

    def contains(self, value) -> bool:
        value = np.asarray(value)
        if value.shape != self.shape or value.dtype != self.dtype:
            return False
        if self.dtype == bool:
            return True
        return bool(np.all(value >= self.low) and np.all(value <= self.high))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.dtype == bool:
            return rng.integers(0, 2, self.shape).astype(bool)
        if np.issubdtype(self.dtype, np.integer):
            return rng.integers(self.low, np.asarray(self.high) + 1, self.shape).astype(self.dtype)
        low = np.broadcast_to(np.asarray(self.low, np.float64), self.shape)
        high = np.broadcast_to(np.asarray(self.high, np.float64), self.shape)
        low = np.where(np.isfinite(low), low, -1.0)
        high = np.where(np.isfinite(high), high, 1.0)
        return np.asarray(rng.uniform(low, high), dtype=self.dtype)

    def to_dict(self) -> dict:
        """Plain data for checkpoints and configs (no pickle)."""
        def plain(x):
            x = np.asarray(x)
            return x.item() if x.ndim == 0 or np.all(x == x.flat[0]) and x.size else x.tolist()
        return {"shape": list(self.shape), "dtype": self.dtype.name, "low": plain(self.low), "high": plain(self.high)}

    @classmethod
    def from_dict(cls, data: dict) -> "Space":
        return cls(tuple(data["shape"]), np.dtype(data["dtype"]), data.get("low"), data.get("high"))


def _default_bound(dtype: np.dtype, low: bool):
    if dtype == bool:
        return False if low else True
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return info.min if low else info.max
    return -np.inf if low else np.inf
