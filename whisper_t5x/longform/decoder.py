"""The Decoder: the one object that runs compiled decoding for every long-form mode.

Chunked windows, VAD rows, the sequential seek and the server all decode
through a :class:`Decoder`. It owns

* the compiled programs, keyed by the static :class:`DecodeOptions` (one per
  task / language / timestamps / prompt-length bucket / beams / sampling; the
  batch shape is part of XLA's own key), partitioned with the pipeline's
  partitioner when the parameters are sharded;
* row padding: a batch of ``n`` rows is padded to :func:`bucket_size`
  (a power of two up to ``batch_size``, a multiple of the data axis) by
  repeating its last row, so only a few batch shapes are ever compiled;
* prompts: the last 223 tokens are kept (as openai-whisper and
  faster-whisper do) and their length is rounded down to a bucket
  (:data:`PROMPT_BUCKETS`), so prompts of any length compile a bounded set;
* temperature fallback with one policy (:mod:`whisper_t5x.longform.fallback`):
  rows judged failed are decoded again, alone, at the next temperatures
  (``best_of`` draws each, the most likely kept, as openai-whisper's and
  faster-whisper's ``best_of=5``); when every temperature fails, the best
  attempt is kept; silent rows give no text.

:meth:`Decoder.submit` only dispatches (JAX runs asynchronously), so a caller
can prepare the next batch while the device works; :meth:`Pending.result`
fetches, judges and re-decodes. :meth:`Decoder.decode` does both for rows
that need different prompts or languages (grouped by compile key).
Several threads may call :meth:`Decoder.decode` at once (the server's batcher and its live-stream
scheduler share one Decoder); programs, counters and stats are guarded by a lock.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x.decoding.generate import DecodeOptions, forced_prefix, generate
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.segments import cut_at_eot, text_tokens
from whisper_t5x.longform.windows import bucket_size

logger = logging.getLogger(__name__)

__all__ = ["Decoder", "DecodeRequest", "Row", "DecodedRow", "Pending", "PROMPT_BUCKETS", "trim_prompt"]

PROMPT_BUCKETS = (16, 32, 48, 64, 96, 128, 160, 192, 223)
PROMPT_RESET_TEMPERATURE = 0.5  # fallback draws hotter than this decode without the prompt
_EXACT_BELOW = 16  # prompts shorter than this are used whole (short prompts are usually deliberate words)


def trim_prompt(prompt: Sequence[int], max_tokens: int = 223,
                buckets: Optional[Sequence[int]] = PROMPT_BUCKETS) -> Tuple[int, ...]:
    """The prompt tokens decoded: the last ``max_tokens``, then the last ``bucket`` of them, where
    ``bucket`` is the largest of ``buckets`` that fits (prompts under 16 tokens are kept whole)."""
    prompt = tuple(int(t) for t in prompt)[-max_tokens:] if max_tokens > 0 else ()
    if not buckets or len(prompt) < _EXACT_BELOW:
        return prompt
    fitting = [b for b in sorted(buckets) if b <= len(prompt)]
    keep = fitting[-1] if fitting else len(prompt)
    return prompt[len(prompt) - keep:]


@dataclasses.dataclass(frozen=True)
class DecodeRequest:
    """What a call decodes with (shared by its rows): the non-prompt part of the compile key plus fallback."""

    task: Optional[str] = "transcribe"
    language: Any = None  # code, token id or None (detect per row)
    timestamps: bool = True
    max_length: Optional[int] = None  # tokens from <|startoftranscript|>; None: as many as fit
    sample_len: Optional[int] = None  # or: at most this many sampled tokens after the forced prefix
    num_beams: int = 1
    length_penalty: Optional[float] = None
    suppress_tokens: Optional[Tuple[int, ...]] = None
    begin_suppress_tokens: Optional[Tuple[int, ...]] = None
    fallback: fb.FallbackConfig = fb.FallbackConfig()
    seed: int = 0
    best_of: int = 5  # sampled draws per failing row at each fallback temperature (openai / faster-whisper: 5)
    prompt_buckets: Optional[Tuple[int, ...]] = PROMPT_BUCKETS  # None: prompts used at their exact length
    audio_ctx: Optional[int] = None  # encoder positions encoded (None: the whole window; live streams: fewer)
    alignment_heads: Tuple[Tuple[int, int], ...] = ()  # greedy rows also get each token's frame (DecodedRow.frames)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row to decode: its features and what conditions it."""

    features: np.ndarray  # (n_mels, 3000) log-mel, or (480000,) audio when features are computed on device
    prompt: Tuple[int, ...] = ()  # previous text (tokens, without <|startofprev|>)
    language: Optional[int] = None  # a language token for this row; None: the request's (or detect)


@dataclasses.dataclass(frozen=True)
class DecodedRow:
    """A decoded row after fallback."""

    tokens: Tuple[int, ...]  # sampled tokens after the forced prefix, cut at end-of-text (timestamps kept)
    text: str  # the text tokens decoded
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    language_token: int
    silent: bool  # judged silence: ``tokens`` and ``text`` are empty
    compression_ratio: float
    frames: Tuple[int, ...] = ()  # with DecodeRequest.alignment_heads: per token of ``tokens``, its encoder position


@dataclasses.dataclass
class _Batch:
    features: np.ndarray  # padded rows
    count: int  # real rows
    prompt: Optional[np.ndarray]  # (rows, plen) int32 or None
    language: Optional[int]
    temperature: float
    dispatch_no: int


class Pending:
    """A dispatched batch; :meth:`result` fetches it and applies the fallback."""

    def __init__(self, decoder: "Decoder", request: DecodeRequest, batch: _Batch, output: Any, started: float):
        self._decoder, self._request, self._batch, self._output, self._started = decoder, request, batch, output, started

    @property
    def count(self) -> int:
        return self._batch.count

    def result(self) -> List[DecodedRow]:
        return self._decoder._finish(self._request, self._batch, self._output, self._started)


class Decoder:
    """Compiled decoding of rows with bucket padding, partitioning and temperature fallback."""

    def __init__(self, model: Any, params: Any, batch_size: int, feature_backend: str = "numpy"):
        self.model = model
        self.config = model.config
        self.special = model.config.special_tokens
        self.tokenizer = model.tokenizer
        self.batch_size = int(batch_size)
        self.feature_backend = feature_backend
        self.params = params
        self.partitioner = None
        self.param_axes = None
        self._programs: Dict[DecodeOptions, Any] = {}
        self._seen: set = set()
        self._jit_features = None
        self._dispatches = 0
        self.alignment_programs: Dict[Any, Any] = {}  # word-timestamp forwards (longform.alignment)
        self.stats: "collections.Counter[str]" = collections.Counter()
        # decode() may be called from several threads at once (the server's batcher and its live-stream
        # scheduler share one Decoder): programs, the dispatch counter and the stats change under this lock.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ parameters and programs
    def set_params(self, params: Any, partitioner: Any = None, param_axes: Any = None) -> None:
        """New parameters (sharded with ``partitioner`` by ``param_axes`` when given): programs are rebuilt."""
        self.params, self.partitioner, self.param_axes = params, partitioner, param_axes
        self._programs.clear()
        self.alignment_programs.clear()

    @property
    def data_size(self) -> int:
        return 1 if self.partitioner is None else int(self.partitioner.data_mesh_size)

    def options(self, request: DecodeRequest, prompt_length: int = 0, sample: bool = False,
                language: Optional[int] = None) -> DecodeOptions:
        """The static options (compile key) of ``request`` for one prompt length, language and sampling."""
        max_length = request.max_length
        if request.sample_len is not None:
            context = 1 + prompt_length if prompt_length else 0
            prefix = (2 if self.config.is_multilingual else 0) + (0 if request.timestamps else 1)
            max_length = min(1 + prefix + request.sample_len, self.config.max_target_positions - context)
        options = self.model.decode_options(
            task=request.task, language=request.language if language is None else language,
            return_timestamps=request.timestamps, max_length=max_length,
            num_beams=1 if sample else request.num_beams, length_penalty=request.length_penalty,
            prompt_length=prompt_length, sample=sample, suppress_tokens=request.suppress_tokens,
            begin_suppress_tokens=request.begin_suppress_tokens,
        )
        if request.audio_ctx is not None:
            options = dataclasses.replace(options, audio_ctx=int(request.audio_ctx))
        if request.alignment_heads and options.num_beams == 1:
            options = dataclasses.replace(options, alignment_heads=tuple(request.alignment_heads))
        return options

    def program(self, options: DecodeOptions) -> Any:
        fn = self._programs.get(options)
        if fn is not None:
            return fn
        with self._lock:
            if options not in self._programs:
                self._programs[options] = self._build_program(options)
            return self._programs[options]

    def _build_program(self, options: DecodeOptions) -> Any:
        module = self.model.module

        def run(params, features, prompt, temperature, rng):
            return generate(module, params, features, options, prompt, temperature, rng)

        if self.partitioner is None:
            from whisper_t5x.program_cache import cached_program

            fn = cached_program(jax.jit(run), "decode", key=(module, options))
        else:
            from jax.sharding import PartitionSpec as P

            fn = self.partitioner.partition(run, in_axis_resources=(self.param_axes, P("data"), None, None, None),
                                            out_axis_resources=P("data"))
        return fn

    @property
    def num_programs(self) -> int:
        return len(self._programs)

    # ------------------------------------------------------------------ dispatch
    def _features(self, rows: np.ndarray) -> Any:
        if self.feature_backend == "jax" and rows.ndim == 2:  # audio: log-mel on the device
            if self._jit_features is None:
                from whisper_t5x.audio.features import log_mel_spectrogram

                n_mels = self.config.num_mel_bins
                self._jit_features = jax.jit(lambda x: log_mel_spectrogram(x, n_mels=n_mels))
            return self._jit_features(jnp.asarray(rows))
        return jnp.asarray(rows)

    def _dispatch(self, request: DecodeRequest, batch: _Batch) -> Any:
        plen = 0 if batch.prompt is None else int(batch.prompt.shape[1])
        # Greedy and sampling share one program (the loop picks from the traced temperature), so fallback
        # re-decodes compile nothing new.
        options = dataclasses.replace(self.options(request, plen, batch.temperature > 0, batch.language), sample=False)
        rng = jax.random.fold_in(jax.random.PRNGKey(request.seed), batch.dispatch_no)
        prompt = None if batch.prompt is None else jnp.asarray(batch.prompt)
        key = (options, batch.features.shape[0])
        if key not in self._seen:
            self._seen.add(key)
            logger.info("compiling decode for %d rows (prompt %d, temperature %s)", batch.features.shape[0], plen,
                        batch.temperature)
        return self.program(options)(self.params, self._features(batch.features), prompt,
                                     jnp.float32(batch.temperature), rng)

    def _pad(self, features: np.ndarray, prompts: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        count = features.shape[0]
        size = bucket_size(count, max(self.batch_size, count), self.data_size) if count <= self.batch_size else count
        if size > count:
            idx = np.concatenate([np.arange(count), np.full(size - count, count - 1)])
            features = features[idx]
            prompts = None if prompts is None else prompts[idx]
        return features, prompts

    def submit(self, features: np.ndarray, request: DecodeRequest, prompt: Sequence[int] = (),
               language: Optional[int] = None, count: Optional[int] = None) -> Pending:
        """Dispatch one batch of rows sharing ``prompt`` and ``language``; returns at once.

        ``features``: ``(rows, n_mels, 3000)`` (or audio rows with device features); rows past
        ``count`` are padding already (their results are dropped); fewer rows than a bucket are padded.
        """
        features = np.asarray(features)
        count = features.shape[0] if count is None else int(count)
        kept = trim_prompt(prompt, self.config.max_target_positions // 2 - 1, request.prompt_buckets)
        prompts = np.tile(np.asarray(kept, np.int32)[None, :], (features.shape[0], 1)) if kept else None
        features, prompts = self._pad(features, prompts)
        batch = _Batch(features, count, prompts, language, float(request.fallback.temperatures[0]),
                       self._next_dispatch())
        started = time.perf_counter()
        return Pending(self, request, batch, self._dispatch(request, batch), started)

    def decode(self, rows: Sequence[Row], request: DecodeRequest) -> List[DecodedRow]:
        """Decode rows with per-row prompts and languages (grouped by compile key, in batches)."""
        results: List[Optional[DecodedRow]] = [None] * len(rows)
        groups: Dict[Tuple[int, Optional[int]], List[int]] = {}
        prompts = [trim_prompt(r.prompt, self.config.max_target_positions // 2 - 1, request.prompt_buckets)
                   for r in rows]
        for k, r in enumerate(rows):
            groups.setdefault((len(prompts[k]), r.language), []).append(k)
        pending = []
        for (plen, language), members in groups.items():
            for lo in range(0, len(members), self.batch_size):
                chunk = members[lo:lo + self.batch_size]
                feats = np.stack([rows[k].features for k in chunk])
                prompt = np.asarray([prompts[k] for k in chunk], np.int32) if plen else None
                feats, prompt = self._pad(feats, prompt)
                batch = _Batch(feats, len(chunk), prompt, language, float(request.fallback.temperatures[0]),
                               self._next_dispatch())
                pending.append((chunk, Pending(self, request, batch, self._dispatch(request, batch),
                                               time.perf_counter())))
        for chunk, p in pending:
            for k, res in zip(chunk, p.result()):
                results[k] = res
        return results  # type: ignore[return-value]

    def begin_call(self) -> None:
        """Restart the random keys: sampled decodes of a call do not depend on earlier calls."""
        self._dispatches = 0

    def _next_dispatch(self) -> int:
        with self._lock:
            self._dispatches += 1
            return self._dispatches

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    # ------------------------------------------------------------------ results and fallback
    def _rows(self, output: Any, options_prefix: int, count: int, temperature: float) -> List[DecodedRow]:
        host = jax.device_get(output)
        sequences = np.asarray(host.sequences)
        frames = None if getattr(host, "frames", None) is None else np.asarray(host.frames)
        begin = 1 + options_prefix
        out = []
        for j in range(count):
            tokens = tuple(cut_at_eot(sequences[j, begin:], self.special.eot))
            text = self.tokenizer.decode(text_tokens(tokens, self.special.eot))
            at = () if frames is None else tuple(int(f) for f in frames[j, begin:begin + len(tokens)])
            out.append(DecodedRow(tokens, text, float(host.avg_logprob[j]), float(host.no_speech_prob[j]),
                                  float(temperature), int(host.language_token[j]), False, fb.compression_ratio(text),
                                  at))
        return out

    def _prefix_length(self, request: DecodeRequest, batch: _Batch) -> int:
        plen = 0 if batch.prompt is None else int(batch.prompt.shape[1])
        options = self.options(request, plen, False, batch.language)
        return len(forced_prefix(options, self.special, self.config.is_multilingual))

    def _sample(self, request: DecodeRequest, batch: _Batch, prefix: int, retry: List[int],
                temperature: float) -> List[DecodedRow]:
        """Rows ``retry`` of ``batch`` sampled at ``temperature``, ``best_of`` times each; the most likely
        draw (highest average log-probability) of each row, as openai-whisper and faster-whisper pick it."""
        draws = [k for k in retry for _ in range(max(1, request.best_of))]
        found: List[DecodedRow] = []
        # Above PROMPT_RESET_TEMPERATURE the prompt is dropped: a prompt the model keeps failing with
        # (e.g. one that makes it repeat itself) is not trusted, as openai-whisper stops conditioning on
        # text decoded that hot.
        keep_prompt = batch.prompt is not None and temperature <= PROMPT_RESET_TEMPERATURE
        for lo in range(0, len(draws), self.batch_size):
            idx = np.asarray(draws[lo:lo + self.batch_size])
            prompt = batch.prompt[idx] if keep_prompt else None
            feats, prompt = self._pad(batch.features[idx], prompt)
            again = _Batch(feats, len(idx), prompt, batch.language, temperature, self._next_dispatch())
            found.extend(self._rows(self._dispatch(request, again), prefix, len(idx), temperature))
        self._count("fallback_decodes", len(draws))
        n = max(1, request.best_of)
        return [max(found[j * n:(j + 1) * n], key=lambda r: r.avg_logprob) for j in range(len(retry))]

    def _finish(self, request: DecodeRequest, batch: _Batch, output: Any, started: float) -> List[DecodedRow]:
        prefix = self._prefix_length(request, batch)
        rows = self._rows(output, prefix, batch.count, batch.temperature)
        cfg = request.fallback
        self._count("rows", batch.count)
        self._count("padding_rows", batch.features.shape[0] - batch.count)
        logger.debug("decoded %d rows in %.2f s", batch.count, time.perf_counter() - started)
        verdict = [fb.judge(r.text, r.avg_logprob, r.no_speech_prob, cfg) for r in rows]
        retry = [k for k, v in enumerate(verdict) if v == fb.RETRY] if cfg.enabled else []
        best = {k: rows[k] for k in retry}
        for temperature in cfg.temperatures[1:]:
            if not retry:
                break
            new = self._sample(request, batch, prefix, retry, float(temperature))
            still = []
            for k, r in zip(retry, new):
                v = fb.judge(r.text, r.avg_logprob, r.no_speech_prob, cfg)
                if v == fb.RETRY:
                    if fb.better(r.text, r.avg_logprob, best[k].text, best[k].avg_logprob, cfg):
                        best[k] = r
                    still.append(k)
                else:
                    rows[k], verdict[k] = r, v
            retry = still
        for k in retry:
            rows[k] = best[k]
        for k, v in enumerate(verdict):
            if v == fb.SILENT:
                self._count("silent_rows", 1)
                rows[k] = dataclasses.replace(rows[k], tokens=(), text="", silent=True, compression_ratio=0.0,
                                              frames=())
        return rows
