"""The compiled generate loop: encoder, cross K/V once, then a while_loop over tokens.

One call of :func:`generate` is one ``jax.jit`` program. Its static
configuration is :class:`DecodeOptions` (hashable); changing any field of it,
the batch size, the prompt length or the input dtype compiles a new program.
Everything else (features, params, temperature, the random key, prompt token
values) is traced, so e.g. temperature fallback reuses the compiled program.

Decoding of one batch:

1. ``[<|startofprev|>, prompt..., <|startoftranscript|>]`` is run through the
   decoder in one call. This computes the cross-attention K/V of every layer
   (kept for the whole loop), and the logits at ``<|startoftranscript|>`` give
   the no-speech probability and, when no language is given, each row's
   language.
2. The rest of the forced prefix (language, task, ``<|notimestamps|>``) is run
   in a second call; its last logits are the first sampled position.
3. A ``lax.while_loop`` samples one token per step for every row, applying the
   logit rules of :mod:`whisper_t5x.decoding.logit_rules`, and stops as soon as every
   row has emitted end-of-text or ``max_length`` is reached.

Beam search (``num_beams > 1``) runs in the same loop with beams folded into
the batch; the beams of one audio row share its cross-attention K/V.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from whisper_t5x.decoding import logit_rules as rules
from whisper_t5x.model.config import SpecialTokens, WhisperConfig
from whisper_t5x.model.whisper import WhisperModule, init_cache, map_batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Static decoding configuration. Every field is part of the compile key."""

    task: Optional[str] = "transcribe"  # "transcribe" | "translate" | None (English-only models)
    language_token: Optional[int] = None  # None: detect per row (multilingual models)
    return_timestamps: bool = False
    max_length: int = 448  # length of the returned sequences, from <|startoftranscript|>
    prompt_length: int = 0  # number of prompt tokens (without <|startofprev|>)
    num_beams: int = 1
    length_penalty: Optional[float] = None
    suppress_tokens: Tuple[int, ...] = ()
    begin_suppress_tokens: Tuple[int, ...] = ()
    max_initial_timestamp_index: Optional[int] = 50
    sample: bool = False  # True: sample with ``temperature`` instead of argmax


class GenerateOutput(NamedTuple):
    """Per-row results. ``sequences`` start at <|startoftranscript|> and are
    padded with end-of-text to ``max_length``."""

    sequences: Array  # (batch, max_length) int32
    sum_logprob: Array  # (batch,) float32
    avg_logprob: Array  # (batch,) float32
    num_tokens: Array  # (batch,) int32: sampled tokens, end-of-text excluded
    no_speech_prob: Array  # (batch,) float32
    language_token: Array  # (batch,) int32: forced or detected
    language_prob: Array  # (batch,) float32


def forced_prefix(options: DecodeOptions, special: SpecialTokens, multilingual: bool) -> Tuple[int, ...]:
    """The tokens forced after <|startoftranscript|>; -1 marks the detected language."""
    prefix = []
    if multilingual:
        prefix.append(options.language_token if options.language_token is not None else -1)
        prefix.append(special.translate if options.task == "translate" else special.transcribe)
    if not options.return_timestamps:
        prefix.append(special.no_timestamps)
    return tuple(prefix)


def _apply_rules(logits, state, options: DecodeOptions, special: SpecialTokens):
    """All logit rules for one step; ``state`` holds the per-row sampling history."""
    logits = rules.suppress_at_begin(logits, state["num_sampled"] == 0, options.begin_suppress_tokens)
    logits = rules.suppress_tokens(logits, options.suppress_tokens)
    if options.return_timestamps:
        logits = rules.timestamp_rules(
            logits,
            num_sampled=state["num_sampled"],
            last_token=state["last_token"],
            penultimate_token=state["penultimate_token"],
            last_timestamp=state["last_timestamp"],
            timestamp_begin=special.timestamp_begin,
            eot=special.eot,
            no_timestamps=special.no_timestamps,
            max_initial_timestamp_index=options.max_initial_timestamp_index,
        )
    return logits


def _record(state, token, special: SpecialTokens):
    """Update the per-row history with the newly sampled ``token``."""
    is_ts = token >= special.timestamp_begin
    return dict(
        state,
        penultimate_token=state["last_token"],
        last_token=token,
        last_timestamp=jnp.where(is_ts, token - special.timestamp_begin, state["last_timestamp"]),
        num_sampled=state["num_sampled"] + 1,
    )


class Start(NamedTuple):
    """Decoder state after the forced prefix, shared by greedy and beam search."""

    seq: Array  # (rows, max_length): <|startoftranscript|> + forced prefix, then end-of-text
    cache: Any  # self-attention cache with the context and prefix written
    cross_kv: Any  # one copy per audio row (beams share it)
    logits: Array  # (rows, vocab) logits of the first sampled position
    context: int  # decoder positions before <|startoftranscript|> (<|startofprev|> + prompt)
    sample_begin: int  # index in ``seq`` of the first sampled token
    no_speech_prob: Array  # (batch,)
    language: Array  # (batch,) forced or detected language token
    language_prob: Array  # (batch,)


def start(module: WhisperModule, params: Any, input_features: Array, options: DecodeOptions,
          prompt_ids: Optional[Array] = None, beams: int = 1, cache_length: Optional[int] = None) -> Start:
    """Encode, compute the cross K/V once, read language and no-speech, force the prefix.

    With ``beams > 1`` every audio row becomes ``beams`` consecutive decoder
    rows (cache, logits, sequences); the cross K/V stay one copy per audio row.
    ``cache_length``: self-attention cache positions (default: prompt plus
    ``max_length``; :func:`generate` starts smaller and grows it).
    """
    config: WhisperConfig = module.config
    special = config.special_tokens
    batch = input_features.shape[0]
    variables = {"params": params}
    prefix = forced_prefix(options, special, config.is_multilingual)
    context = (1 + options.prompt_length) if options.prompt_length else 0
    total = context + options.max_length
    if total > config.max_target_positions:
        raise ValueError(
            f"prompt ({options.prompt_length} tokens + <|startofprev|>) plus max_length {options.max_length} "
            f"is {total} decoder positions; this model has {config.max_target_positions}"
        )
    if options.max_length < 1 + len(prefix) + 1:
        raise ValueError(f"max_length {options.max_length} leaves no room after the forced prefix {prefix}")

    hidden = module.apply(variables, input_features, method=WhisperModule.encode)
    # Step 1: context + <|startoftranscript|>; computes the cross K/V once.
    first = jnp.full((batch, 1), special.sot, jnp.int32)
    if options.prompt_length:
        sot_prev = jnp.full((batch, 1), special.sot_prev, jnp.int32)
        prompt = jnp.broadcast_to(jnp.asarray(prompt_ids, jnp.int32), (batch, options.prompt_length))
        first = jnp.concatenate([sot_prev, prompt, first], axis=1)
    out = module.apply(
        variables, first, cache=init_cache(config, batch, cache_length or total, module.dtype), cache_index=0,
        encoder_hidden=hidden, method=WhisperModule.decode,
    )
    cross_kv = out.cross_kv
    sot_logits = out.logits[:, -1]
    no_speech_prob = jax.nn.softmax(sot_logits, axis=-1)[:, special.no_speech]
    detected, language_prob = rules.language_probs(sot_logits, special.language_ids)
    if options.language_token is not None and config.is_multilingual:
        language = jnp.full((batch,), options.language_token, jnp.int32)
        language_prob = jnp.take_along_axis(
            jax.nn.softmax(rules.restrict_to(sot_logits, special.language_ids), -1), language[:, None], -1
        )[:, 0]
    elif config.is_multilingual:
        language = detected
    else:
        language = jnp.full((batch,), special.language_ids[0], jnp.int32)  # English
        language_prob = jnp.ones((batch,), jnp.float32)

    cache, logits, row_language = out.cache, sot_logits, language
    if beams > 1:
        cache = map_batch(lambda a, axis: jnp.repeat(a, beams, axis=axis), cache, config)
        logits = jnp.repeat(logits, beams, axis=0)
        row_language = jnp.repeat(language, beams, axis=0)
    rows = batch * beams
    seq = jnp.full((rows, options.max_length), special.eot, jnp.int32).at[:, 0].set(special.sot)
    if prefix:
        forced = jnp.stack(
            [row_language if tok == -1 else jnp.full((rows,), tok, jnp.int32) for tok in prefix], axis=1
        )
        seq = seq.at[:, 1:1 + len(prefix)].set(forced)
        out = module.apply(
            variables, forced, cache=cache, cache_index=context + 1, cross_kv=cross_kv, method=WhisperModule.decode
        )
        cache, logits = out.cache, out.logits[:, -1]
    return Start(seq, cache, cross_kv, logits, context, 1 + len(prefix), no_speech_prob, language, language_prob)


CACHE_SPANS = (160,)  # self-attention cache lengths tried before the full one (each stage is compiled)


def cache_spans(first_position: int, total: int, spans: Tuple[int, ...] = CACHE_SPANS) -> Tuple[int, ...]:
    """Cache lengths of the decoding stages: ``spans`` that leave room past ``first_position``, then ``total``.

    A decoding step's self-attention reads its whole cache, so a cache of 448
    positions costs about 30% of a ``base`` step on CPU at batch 8 (44 ms vs
    34 ms with 160 positions); 30 s windows of speech rarely need more than 160.
    Each stage is its own ``while_loop`` (one more compiled step per stage).
    """
    out = [s for s in spans if first_position + 16 <= s < total]
    return tuple(out) + (total,)


def grow_cache(cache: Any, length: int) -> Any:
    """Zero-pad every self-attention cache array along its length axis (-2) to ``length``."""

    def pad(a):
        extra = length - a.shape[-2]
        if extra <= 0:
            return a
        widths = [(0, 0)] * a.ndim
        widths[-2] = (0, extra)
        return jnp.pad(a, widths)

    return jax.tree_util.tree_map(pad, cache)


def generate(
    module: WhisperModule,
    params: Any,
    input_features: Array,
    options: DecodeOptions,
    prompt_ids: Optional[Array] = None,
    temperature: Any = 0.0,
    rng: Optional[Array] = None,
) -> GenerateOutput:
    """Decode a batch of log-mel windows. Jittable with ``options`` static."""
    special = module.config.special_tokens
    batch = input_features.shape[0]
    variables = {"params": params}
    if options.num_beams > 1:
        from whisper_t5x.decoding import beam as beam_search  # local: greedy users never import it

        return beam_search.beam_generate(module, params, input_features, options, prompt_ids)

    context = (1 + options.prompt_length) if options.prompt_length else 0
    prefix = forced_prefix(options, special, module.config.is_multilingual)
    spans = cache_spans(context + 1 + len(prefix), context + options.max_length)
    begin = start(module, params, input_features, options, prompt_ids, cache_length=spans[0])
    seq, cache, cross_kv, next_logits, context = begin.seq, begin.cache, begin.cross_kv, begin.logits, begin.context
    sample_begin = begin.sample_begin
    temperature = jnp.asarray(temperature, jnp.float32)
    if rng is None:
        rng = jax.random.PRNGKey(0)

    def choose(logits, key):
        if not options.sample:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        scaled = logits / jnp.maximum(temperature, 1e-6)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    state = dict(
        seq=seq,
        cache=cache,
        logits=next_logits,
        index=jnp.asarray(sample_begin, jnp.int32),
        done=jnp.zeros((batch,), bool),
        sum_logprob=jnp.zeros((batch,), jnp.float32),
        num_sampled=jnp.zeros((batch,), jnp.int32),
        num_tokens=jnp.zeros((batch,), jnp.int32),
        last_token=jnp.full((batch,), -1, jnp.int32),
        penultimate_token=jnp.full((batch,), -1, jnp.int32),
        last_timestamp=jnp.full((batch,), -1, jnp.int32),
        rng=rng,
    )

    def cond_until(limit):
        return lambda s: (s["index"] < limit) & ~jnp.all(s["done"])

    def body(s):
        logits = _apply_rules(s["logits"], s, options, special)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        rng, key = jax.random.split(s["rng"])
        token = choose(logits, key)
        token = jnp.where(s["done"], special.eot, token)
        token_logprob = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
        sum_logprob = s["sum_logprob"] + jnp.where(s["done"], 0.0, token_logprob)
        done = s["done"] | (token == special.eot)
        s = _record(s, token, special)
        seq = jax.lax.dynamic_update_slice(s["seq"], token[:, None], (0, s["index"]))
        out = module.apply(
            variables,
            token[:, None],
            cache=s["cache"],
            cache_index=context + s["index"],
            cross_kv=cross_kv,
            method=WhisperModule.decode,
        )
        return dict(
            s,
            seq=seq,
            cache=out.cache,
            logits=out.logits[:, -1],
            index=s["index"] + 1,
            done=done,
            sum_logprob=sum_logprob,
            num_tokens=s["num_tokens"] + (~done).astype(jnp.int32),
            rng=rng,
        )

    # The loop runs in stages over a growing self-attention cache: each step
    # reads the whole cache, and most windows end long before max_length.
    for span in spans:
        state["cache"] = grow_cache(state["cache"], span)
        state = jax.lax.while_loop(cond_until(span - context), body, state)
    # Reference convention: average over the sampled text tokens plus end-of-text.
    avg_logprob = state["sum_logprob"] / (state["num_tokens"] + 1).astype(jnp.float32)
    return GenerateOutput(
        sequences=state["seq"],
        sum_logprob=state["sum_logprob"],
        avg_logprob=avg_logprob,
        num_tokens=state["num_tokens"],
        no_speech_prob=begin.no_speech_prob,
        language_token=begin.language,
        language_prob=begin.language_prob,
    )
