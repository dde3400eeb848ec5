"""The step-function protocol between the decoding loops and a model.

The loops of :mod:`~whisper_t5x.decoding.greedy` and
:mod:`~whisper_t5x.decoding.beam` never see a model: they call a
:class:`StepFn` that turns the newest tokens and an opaque cache into the next
logits and the updated cache. The Whisper decoder's step is built in
:mod:`~whisper_t5x.decoding.generate`; tests pass a few-line fake.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


class StepFn(Protocol):
    """``step(tokens, cache, position) -> (logits, cache)``.

    ``tokens`` (rows, n) int32 are the newest tokens of every row, to be placed
    at sequence index ``position`` .. ``position + n - 1`` (a traced or Python
    int, the same for every row); ``logits`` (rows, vocab) float32 are the
    next-token logits after the last of them. ``cache`` is any pytree the step
    owns; the loops only carry it (and reorder its rows, see :class:`ReorderFn`).
    """

    def __call__(self, tokens: Array, cache: Any, position: Any) -> Tuple[Array, Any]:
        ...


class ReorderFn(Protocol):
    """``reorder(cache, index) -> cache`` with row ``i`` of the result being row ``index[i]``."""

    def __call__(self, cache: Any, index: Array) -> Any:
        ...


class Decoded(NamedTuple):
    """One hypothesis per row, as both loops report it."""

    sequences: Array  # (rows, max_length) int32: the forced prefix, sampled tokens, end-of-text padding
    sum_logprob: Array  # (rows,) float32: over the sampled tokens and the first end-of-text
    num_tokens: Array  # (rows,) int32: sampled tokens, end-of-text excluded


def take_rows(cache: Any, index: Array) -> Any:
    """The default :class:`ReorderFn`: every cache leaf has its rows on axis 0."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), cache)
