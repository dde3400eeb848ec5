"""Building what a job config names: the partitioner, then the pipeline.

:func:`load_pipeline` is what every job calls (the file job, the labelling
job, the server): it turns a job config's :class:`~whisper_t5x.app.config.ModelSection`
and :class:`~whisper_t5x.app.config.PartitionSection` into a pipeline, with
the batch size checked against the mesh first (:func:`check_batch_size`), and
reports any failure as one :class:`PipelineBuildError`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Dict, Optional

from whisper_t5x.app.config import DEFAULT_PIPELINE, ModelSection, PartitionSection

logger = logging.getLogger("whisper_t5x.app.build")

__all__ = ["PipelineBuildError", "build_partitioner", "build_pipeline", "check_batch_size", "load_pipeline",
           "prefetch_programs", "resolve_callable"]


class PipelineBuildError(RuntimeError):
    """The model / pipeline could not be built (nothing can be transcribed)."""


def resolve_callable(spec: Any) -> Callable:
    """A callable, or one named ``"module:attr"`` / ``"module.attr"``."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        if not attr:
            module, _, attr = spec.rpartition(".")
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            raise RuntimeError(f"cannot import pipeline module {module!r} (from {spec!r}): {e}") from e
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    raise TypeError(f"pipeline must be 'module:Class' or a callable, got {spec!r}")


def _jnp_dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[str(name)]


def build_partitioner(spec: Any, process_count: int = 1):
    """The partitioner from config: ``None``, an instance, or a factory.

    Under multi-host every process decodes its own inputs, so the mesh must
    span this process's devices only: factories are called with
    ``devices=jax.local_devices()``, and when none is configured a
    data-parallel one over the local devices is made (the slot engine's
    slots are spread over them), or none at all for a process with one
    device (a mesh of one shards nothing).
    """
    is_instance = spec is not None and not isinstance(spec, type) and hasattr(spec, "partition")
    if spec is not None and (is_instance or not callable(spec)):
        if process_count > 1:
            logger.warning("a partitioner instance was configured; under multi-host bind a factory "
                           "(@partitioning.PjitPartitioner without parentheses) so it uses local devices")
        return spec
    if process_count <= 1:
        return spec() if spec is not None else None
    import jax

    if spec is None:
        if len(jax.local_devices()) == 1:
            return None
        from partitioning import PjitPartitioner, rules_for

        return PjitPartitioner(num_partitions=1, logical_axis_rules=rules_for("dp"), devices=jax.local_devices())
    return spec(devices=jax.local_devices())


def check_batch_size(batch_size: Optional[int], partitioner: Any) -> None:
    """A batch is split over the mesh's data axis, so it must be a multiple of that axis's size."""
    data = getattr(partitioner, "data_mesh_size", None)
    if batch_size is not None and data and int(batch_size) % int(data):
        raise ValueError(f"PartitionSection.batch_size {batch_size} must be a multiple of the data-parallel "
                         f"size {data} (devices / num_partitions)")


def prefetch_programs(model: ModelSection, partition: PartitionSection, batch: Optional[int]) -> int:
    """For the default pipeline on one device: turn on the compile cache (as the pipeline would) and start
    loading, in the background, the compiled programs the last such job used, while the model loads
    (:func:`whisper_t5x.program_cache.prefetch`). Returns how many are being loaded."""
    if partition.pipeline != DEFAULT_PIPELINE or partition.partitioner is not None:
        return 0
    from whisper_t5x import compile_cache, program_cache

    if compile_cache.enable_compile_cache() is None:
        return 0
    return program_cache.prefetch(f"{DEFAULT_PIPELINE}|{model.name}|{model.dtype}|{model.weights_dtype}|"
                                  f"{model.max_length}|{batch}")


def build_pipeline(model: ModelSection, partition: PartitionSection, process_count: int = 1,
                   batch_size: Optional[int] = None):
    """The pipeline the sections name; ``batch_size`` overrides ``partition.batch_size``."""
    batch = partition.batch_size if batch_size is None else batch_size
    if process_count <= 1:
        prefetch_programs(model, partition, batch)
    factory = resolve_callable(partition.pipeline)
    partitioner = build_partitioner(partition.partitioner, process_count)
    check_batch_size(batch, partitioner)
    kwargs: Dict[str, Any] = dict(checkpoint=model.name, batch_size=batch, max_length=model.max_length,
                                  dtype=_jnp_dtype(model.dtype), partitioner=partitioner)
    if model.weights_dtype != "float32":  # custom pipeline factories need not take it
        kwargs["weights_dtype"] = model.weights_dtype
    return factory(**kwargs)


def load_pipeline(config: Any, process_count: int = 1, batch_size: Optional[int] = None):
    """:func:`build_pipeline` for a job config (``config.model``, ``config.partition``), failures as
    :class:`PipelineBuildError` naming the model."""
    try:
        return build_pipeline(config.model, config.partition, process_count, batch_size)
    except Exception as e:  # noqa: BLE001 - unknown model, bad partitioner / batch size, ...
        raise PipelineBuildError(f"cannot set up model {config.model.name!r}: {type(e).__name__}: {e}") from e
