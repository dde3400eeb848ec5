"""The per-row token history the logit rules read, and the rules applied from it.

Both decoding loops (:mod:`~whisper_t5x.decoding.greedy` and
:mod:`~whisper_t5x.decoding.beam`) keep one :class:`TokenHistory` per decoder
row, update it with every sampled token, and call :meth:`LogitRules.apply`
before choosing the next one. The rules themselves are the pure functions of
:mod:`~whisper_t5x.decoding.logit_rules`; this module only decides which apply
and feeds them the history.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from whisper_t5x.decoding import logit_rules as rules

Array = jax.Array


class TokenHistory(NamedTuple):
    """What the rules need to know about the tokens sampled so far, per row."""

    num_sampled: Array  # (rows,) int32: tokens sampled after the forced prefix
    last_token: Array  # (rows,) int32: -1 before the first
    penultimate_token: Array  # (rows,) int32: -1 before the second
    last_timestamp: Array  # (rows,) int32: index of the last sampled timestamp, -1 if none

    @classmethod
    def empty(cls, rows: int) -> "TokenHistory":
        none = jnp.full((rows,), -1, jnp.int32)
        return cls(jnp.zeros((rows,), jnp.int32), none, none, none)

    def record(self, token: Array, timestamp_begin: int) -> "TokenHistory":
        """The history after sampling ``token`` (rows,) in every row."""
        is_ts = token >= timestamp_begin
        return TokenHistory(
            num_sampled=self.num_sampled + 1,
            last_token=token,
            penultimate_token=self.last_token,
            last_timestamp=jnp.where(is_ts, token - timestamp_begin, self.last_timestamp),
        )

    def take(self, index: Array) -> "TokenHistory":
        """Rows ``index`` of the history (beam search reorders rows to the surviving beams)."""
        return TokenHistory(*(jnp.take(a, index, axis=0) for a in self))


@dataclasses.dataclass(frozen=True)
class LogitRules:
    """Which logit rules apply, with the token ids they need. Hashable (a static argument)."""

    eot: int
    timestamp_begin: int  # first timestamp token (tokens >= it are timestamps)
    no_timestamps: int = -1
    suppress_tokens: Tuple[int, ...] = ()
    begin_suppress_tokens: Tuple[int, ...] = ()  # forbidden at the first sampled position
    timestamps: bool = False  # apply the timestamp grammar
    max_initial_timestamp_index: Optional[int] = 50

    def apply(self, logits: Array, history: TokenHistory) -> Array:
        """All rules for one step on ``logits`` (rows, vocab)."""
        logits = rules.suppress_at_begin(logits, history.num_sampled == 0, self.begin_suppress_tokens)
        logits = rules.suppress_tokens(logits, self.suppress_tokens)
        if self.timestamps:
            logits = rules.timestamp_rules(
                logits,
                num_sampled=history.num_sampled,
                last_token=history.last_token,
                penultimate_token=history.penultimate_token,
                last_timestamp=history.last_timestamp,
                timestamp_begin=self.timestamp_begin,
                eot=self.eot,
                no_timestamps=self.no_timestamps,
                max_initial_timestamp_index=self.max_initial_timestamp_index,
            )
        return logits

    def record(self, history: TokenHistory, token: Array) -> TokenHistory:
        """``history`` after sampling ``token`` (rows,)."""
        return history.record(token, self.timestamp_begin)
