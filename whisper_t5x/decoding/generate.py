"""Whisper decoding: encode, cross K/V once, forced prefix, then the injected loops.

This is the one module of :mod:`whisper_t5x.decoding` that knows the model.
It builds the decoder's step function (:func:`decoder_step`) and hands it to
the model-free loops of :mod:`~whisper_t5x.decoding.greedy` and
:mod:`~whisper_t5x.decoding.beam`.

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
3. The greedy/sampling loop samples one token per step for every row under the
   logit rules (:mod:`~whisper_t5x.decoding.rules_state`) and stops as soon as
   every row has emitted end-of-text or ``max_length`` is reached. It runs in
   stages over a growing self-attention cache (:func:`cache_spans`).

Beam search (``num_beams > 1``) folds the beams into the decoder rows; the
beams of one audio row share its cross-attention K/V.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from whisper_t5x.decoding import logit_rules as rules
from whisper_t5x.decoding.beam import beam_search, best_hypothesis
from whisper_t5x.decoding.greedy import CacheStage, greedy_search
from whisper_t5x.decoding.rules_state import LogitRules
from whisper_t5x.decoding.step import Decoded, ReorderFn, StepFn
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
    # Whether the caller samples (temperature > 0). The program decides from the traced temperature
    # either way, so callers may key compiled programs on ``dataclasses.replace(options, sample=False)``
    # and share one program between greedy decoding and temperature fallback.
    sample: bool = False
    # dtype of the vocabulary projection in decoding steps ("bfloat16": the step reads half the bytes
    # of the token table); None: the model's compute dtype. Not used at <|startoftranscript|>.
    vocab_dtype: Optional[str] = None
    # Encoder positions encoded (None: all, 30 s); fewer for audio that ends early in its window (live
    # streams): :class:`~whisper_t5x.model.whisper.AudioEncoder`'s ``audio_ctx``.
    audio_ctx: Optional[int] = None
    # ``(layer, head)`` cross-attention heads whose mean attention places each sampled token in the audio
    # (greedy decoding only): :attr:`GenerateOutput.frames` (AlignAtt without a second forward pass).
    alignment_heads: Tuple[Tuple[int, int], ...] = ()


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
    # With ``DecodeOptions.alignment_heads``: (batch, max_length) int32, for each sampled token the encoder
    # position (20 ms) the alignment heads attended to most when predicting it; -1 where none was read.
    frames: Optional[Array] = None


def forced_prefix(options: DecodeOptions, special: SpecialTokens, multilingual: bool) -> Tuple[int, ...]:
    """The tokens forced after <|startoftranscript|>; -1 marks the detected language."""
    prefix = []
    if multilingual:
        prefix.append(options.language_token if options.language_token is not None else -1)
        prefix.append(special.translate if options.task == "translate" else special.transcribe)
    if not options.return_timestamps:
        prefix.append(special.no_timestamps)
    return tuple(prefix)


def logit_rules_for(options: DecodeOptions, special: SpecialTokens) -> LogitRules:
    """The logit rules ``options`` ask for, with this model's special tokens."""
    return LogitRules(
        eot=special.eot,
        timestamp_begin=special.timestamp_begin,
        no_timestamps=special.no_timestamps,
        suppress_tokens=options.suppress_tokens,
        begin_suppress_tokens=options.begin_suppress_tokens,
        timestamps=options.return_timestamps,
        max_initial_timestamp_index=options.max_initial_timestamp_index,
    )


def vocab_table(params: Any, options: DecodeOptions) -> Optional[Array]:
    """The token table cast to ``options.vocab_dtype`` once per call (None: use the parameter)."""
    embed = params["decoder"]["embed_tokens"]
    if options.vocab_dtype is None or "embedding_scale" in embed:
        return None  # int8-stored table (model.quantize): its own int8 product; a cast would drop the scales
    return jnp.asarray(embed["embedding"]).astype(jnp.dtype(options.vocab_dtype))


def decoder_step(module: WhisperModule, params: Any, cross_kv: Any, context: int,
                 output_embedding: Optional[Array] = None) -> StepFn:
    """The Whisper decoder as a :class:`~whisper_t5x.decoding.step.StepFn`.

    Sequence index ``position`` is decoder position ``context + position``
    (``context``: <|startofprev|> and the prompt before <|startoftranscript|>);
    the cache is the self-attention :class:`~whisper_t5x.model.whisper.KVCache`.
    """
    variables = {"params": params}
    extra = {} if output_embedding is None else {"output_embedding": output_embedding}

    def step(tokens, cache, position):
        out = module.apply(
            variables, tokens, cache=cache, cache_index=context + position, cross_kv=cross_kv,
            method=WhisperModule.decode, **extra,
        )
        return out.logits[:, -1], out.cache

    return step


def reorder_cache(config: WhisperConfig) -> ReorderFn:
    """Beam search's row reordering for this model's cache layout."""
    return lambda cache, index: map_batch(lambda a, axis: jnp.take(a, index, axis=axis), cache, config)


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

    hidden = module.apply(variables, input_features, options.audio_ctx, method=WhisperModule.encode)
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
        step = decoder_step(module, params, cross_kv, context, vocab_table(params, options))
        logits, cache = step(forced, cache, 1)
    return Start(seq, cache, cross_kv, logits, context, 1 + len(prefix), no_speech_prob, language, language_prob)


def attention_frames(intermediates: Any, heads: Tuple[Tuple[int, int], ...], scanned: bool) -> Array:
    """(rows, new tokens) int32: the argmax encoder position of the mean cross-attention of ``heads``,
    read from a decoder call's ``intermediates`` (``mutable=["intermediates"]``)."""
    layers = intermediates["decoder"]["layers"]
    if scanned:
        stacked = layers["cross_attention_weights"][0]  # (layers, rows, heads, tokens, positions)
        weights = [stacked[layer, :, head] for layer, head in heads]
    else:
        weights = [layers[str(layer)]["cross_attention_weights"][0][:, head] for layer, head in heads]
    return jnp.argmax(jnp.mean(jnp.stack(weights), axis=0), axis=-1).astype(jnp.int32)


def aligned_step(module: WhisperModule, params: Any, cross_kv: Any, context: int, heads: Tuple[Tuple[int, int], ...],
                 output_embedding: Optional[Array] = None) -> StepFn:
    """:func:`decoder_step` that also records where the alignment heads look.

    Its cache is ``(self-attention cache, frames)``, ``frames`` (rows, max_length + 1) int32: the
    attention of the tokens input at index ``p`` predicts the token at ``p + 1``, so that token's frame is
    written there (as the post-hoc alignment pairs a token with the attention row before it).
    """
    variables = {"params": params}
    extra = {} if output_embedding is None else {"output_embedding": output_embedding}
    scanned = module.config.scan_layers

    def step(tokens, cache, position):
        kv, frames = cache
        out, inter = module.apply(
            variables, tokens, cache=kv, cache_index=context + position, cross_kv=cross_kv,
            method=WhisperModule.decode, mutable=["intermediates"], **extra,
        )
        found = attention_frames(inter["intermediates"], heads, scanned)
        frames = jax.lax.dynamic_update_slice(frames, found, (0, position + 1))
        return out.logits[:, -1], (out.cache, frames)

    return step


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
    if options.num_beams > 1:
        return beam_generate(module, params, input_features, options, prompt_ids)
    special = module.config.special_tokens
    context = (1 + options.prompt_length) if options.prompt_length else 0
    prefix = forced_prefix(options, special, module.config.is_multilingual)
    spans = cache_spans(context + 1 + len(prefix), context + options.max_length)
    begin = start(module, params, input_features, options, prompt_ids, cache_length=spans[0])
    # The loop runs in stages over a growing self-attention cache: each step
    # reads the whole cache, and most windows end long before max_length.
    stages = [CacheStage(span - context, functools.partial(grow_cache, length=span)) for span in spans]
    if options.alignment_heads:
        return _aligned_generate(module, params, options, begin, context, stages, temperature, rng)
    out = greedy_search(
        decoder_step(module, params, begin.cross_kv, context, vocab_table(params, options)), begin.seq, begin.logits, begin.cache,
        begin.sample_begin, logit_rules_for(options, special),
        sample=None, temperature=temperature, rng=rng, stages=stages,
    )
    return _output(out, begin)


def _aligned_generate(module, params, options, begin, context, stages, temperature, rng) -> GenerateOutput:
    """The greedy loop over :func:`aligned_step`: the frames ride in the step's cache, which the loop only
    carries; each cache stage grows the self-attention part alone."""
    rows, max_length = begin.seq.shape
    frames = jnp.full((rows, max_length + 1), -1, jnp.int32)
    staged = [CacheStage(st.until, (lambda c, grow=st.prepare: (grow(c[0]), c[1])) if st.prepare else None)
              for st in stages]
    # The loop returns no cache: a last, empty stage (no step runs) hands the final one out through its
    # ``prepare`` (same trace, outside the loop bodies).
    final: list = []
    staged.append(CacheStage(0, lambda c: final.append(c) or c))
    decoded = greedy_search(
        aligned_step(module, params, begin.cross_kv, context, tuple(options.alignment_heads),
                     vocab_table(params, options)),
        begin.seq, begin.logits, (begin.cache, frames), begin.sample_begin,
        logit_rules_for(options, module.config.special_tokens),
        sample=None, temperature=temperature, rng=rng, stages=staged,
    )
    return _output(decoded, begin)._replace(frames=final[0][1][:, :max_length])


def beam_generate(
    module: WhisperModule,
    params: Any,
    input_features: Array,
    options: DecodeOptions,
    prompt_ids: Optional[Array] = None,
) -> GenerateOutput:
    """Beam search with ``options.num_beams`` beams (also for one beam, which equals greedy)."""
    config = module.config
    k = options.num_beams
    length_penalty = 1.0 if options.length_penalty is None else float(options.length_penalty)
    begin = start(module, params, input_features, options, prompt_ids, beams=k)
    result = beam_search(
        decoder_step(module, params, begin.cross_kv, begin.context, vocab_table(params, options)), begin.seq, begin.logits, begin.cache,
        begin.sample_begin, logit_rules_for(options, config.special_tokens), k, length_penalty,
        reorder=reorder_cache(config),
    )
    out = best_hypothesis(result, begin.sample_begin, config.special_tokens.eot, length_penalty)
    return _output(out, begin)


def _output(out: Decoded, begin: Start) -> GenerateOutput:
    # Reference convention: average over the sampled text tokens plus end-of-text.
    avg_logprob = out.sum_logprob / (out.num_tokens + 1).astype(jnp.float32)
    return GenerateOutput(
        sequences=out.sequences,
        sum_logprob=out.sum_logprob,
        avg_logprob=avg_logprob,
        num_tokens=out.num_tokens,
        no_speech_prob=begin.no_speech_prob,
        language_token=begin.language,
        language_prob=begin.language_prob,
    )
