"""Temporary bridge for ``whisper_t5x.app.serving`` until it composes the config sections.

The launch-time pieces now live in :mod:`whisper_t5x.app.gin_config`,
:mod:`whisper_t5x.app.config`, :mod:`whisper_t5x.app.distributed` and
:mod:`whisper_t5x.app.build`. This module keeps only what the server still
imports (its flat ``ServeConfig`` and the old names), and goes when the server
reads :class:`whisper_t5x.app.config.ServeConfig`.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Optional

import gin

from whisper_t5x.app import build
from whisper_t5x.app.config import DEFAULT_PIPELINE, DTYPES, ModelSection, PartitionSection
from whisper_t5x.app.gin_config import (  # noqa: F401 (the server's imports)
    GinConfigError, check_required, default_search_paths, make, parse_gin, resolve_gin_file, rewrite_gin_args,
)
from whisper_t5x.app.build import PipelineBuildError  # noqa: F401


@gin.configurable
@dataclasses.dataclass
class ServeConfig:
    """Settings of the transcription endpoint (``configs/runs/serve.gin``), as the server reads them today."""

    model: str = "base"
    dtype: str = "float32"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_batch_delay_ms: float = 10.0
    max_queue: int = 64
    chunk_length_s: float = 30.0
    max_length: Optional[int] = None
    partitioner: Any = None
    pipeline: Any = DEFAULT_PIPELINE

    def __post_init__(self):
        check_required(self)
        if str(self.dtype) not in DTYPES:
            raise ValueError(f"ServeConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"ServeConfig.port must be in [0, 65535], got {self.port}")
        if int(self.max_batch_size) < 1:
            raise ValueError(f"ServeConfig.max_batch_size must be >= 1, got {self.max_batch_size}")


def make_serve_config(**overrides: Any) -> ServeConfig:
    return make(ServeConfig, **overrides)


def TranscribeConfig(model: str = "base", dtype: str = "float32", batch_size: Optional[int] = None,  # noqa: N802
                     max_length: Optional[int] = None, partitioner: Any = None, pipeline: Any = DEFAULT_PIPELINE,
                     **_ignored: Any) -> Any:
    """The model and partition sections from the server's flat settings."""
    return types.SimpleNamespace(model=ModelSection(name=model, dtype=dtype, max_length=max_length),
                                 partition=PartitionSection(partitioner=partitioner, pipeline=pipeline,
                                                            batch_size=batch_size))


def build_pipeline(config: Any, process_count: int = 1):
    return build.build_pipeline(config.model, config.partition, process_count)
