"""SpecAugment on log-mel features: time and frequency masks, in numpy, drawn from a seeded generator.

Each mask replaces a band of frames (time) or mel bins (frequency) with the
row's mean feature value, the masking of Park et al. (2019) without time
warping. Time masks fall inside the row's audio (``valid_frames``), never in
the padding after it, and are at most ``max_time_fraction`` of it, so short
clips are not erased. The caller passes a generator seeded per row, so a
resumed run masks exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

__all__ = ["SpecAugmentConfig", "spec_augment"]


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
    """How many masks, how wide.

    Attributes:
      time_masks: number of time masks per row.
      max_time_width: widest time mask, in frames (100 frames = 1 s).
      max_time_fraction: a time mask covers at most this fraction of the row's audio frames.
      freq_masks: number of frequency masks per row.
      max_freq_width: widest frequency mask, in mel bins.
    """

    time_masks: int = 2
    max_time_width: int = 40
    max_time_fraction: float = 0.05
    freq_masks: int = 2
    max_freq_width: int = 27

    def __post_init__(self):
        for name in ("time_masks", "max_time_width", "freq_masks", "max_freq_width"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"SpecAugmentConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.max_time_fraction) <= 1.0:
            raise ValueError(f"SpecAugmentConfig.max_time_fraction must be in [0, 1], got {self.max_time_fraction!r}")


def spec_augment(features: np.ndarray, rng: np.random.Generator, config: SpecAugmentConfig = SpecAugmentConfig(),
                 valid_frames: Optional[int] = None) -> np.ndarray:
    """A masked copy of one row's ``(n_mels, frames)`` features.

    ``valid_frames``: frames holding audio (the rest is padding); ``None``: all.
    """
    x = np.array(features, dtype=np.float32, copy=True)
    n_mels, frames = x.shape
    valid = frames if valid_frames is None else int(min(max(valid_frames, 0), frames))
    fill = float(x[:, :valid].mean()) if valid else float(x.mean())
    width_t = int(min(config.max_time_width, int(config.max_time_fraction * valid)))
    for _ in range(config.time_masks):
        w = int(rng.integers(0, width_t + 1)) if width_t > 0 else 0
        t0 = int(rng.integers(0, max(valid - w, 0) + 1))
        if w:
            x[:, t0:t0 + w] = fill
    width_f = int(min(config.max_freq_width, n_mels))
    for _ in range(config.freq_masks):
        w = int(rng.integers(0, width_f + 1)) if width_f > 0 else 0
        f0 = int(rng.integers(0, n_mels - w + 1))
        if w:
            x[f0:f0 + w, :] = fill
    return x
