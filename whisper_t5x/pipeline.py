"""``FlaxWhisperPipeline``: long-form transcription and translation of files, bytes and arrays.

::

    from whisper_t5x import FlaxWhisperPipeline

    pipe = FlaxWhisperPipeline("base")                # or "tiny.en", a path, a hub id
    out = pipe("audio.mp3", return_timestamps=True)   # {"text": ..., "chunks": [...]}
    outs = pipe(["a.wav", "b.flac"], batch_size=8)     # a list of such dicts

How a call runs
---------------
1. A background thread loads each input (:func:`whisper_t5x.audio.loading.load_audio`:
   ffmpeg for paths/bytes, soxr for dicts at other rates, channels averaged),
   cuts it into overlapping windows (:mod:`whisper_t5x.longform.windows`, 30 s with 5 s
   strides by default), packs the windows of *all* inputs into batches of
   ``batch_size`` rows and computes their log-mel features. Only the last batch
   is short; it is padded to the next power of two (at most ``batch_size``)
   with copies of its last window, whose results are dropped. Windows that are
   digitally silent (peak below ``silence_threshold``) are not decoded.
2. The main thread dispatches each batch to the compiled generate loop and,
   while the device works (JAX dispatch is asynchronous), fetches and stitches
   the previous batch; the loader thread meanwhile prepares the next batch.
3. Each window's greedy transcript is checked on the host (temperature
   fallback, :mod:`whisper_t5x.longform.fallback`, on by default like openai-whisper):
   rejected windows, and only those, are decoded again by sampling at
   temperatures 0.2 ... 1.0; windows judged silent give no text.
4. Per input, the window transcripts are stitched (:mod:`whisper_t5x.longform.stitching`)
   into ``{"text", "chunks"}`` with absolute, monotonic timestamps.

Language: with ``language=None`` a multilingual checkpoint detects the language
of every window separately (and transcribes each in its own language).
``return_language=True`` adds ``"language"`` (a code such as ``"en"``): the
language most windows with text were detected in, ties going to the earliest.

Without timestamps, ``chunks`` holds one entry per window that contributed
text, spanning the part of the audio that window owns.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x import compile_cache

from whisper_t5x.longform import fallback as fb
from whisper_t5x.audio.loading import SAMPLE_RATE, AudioError, load_audio
from whisper_t5x.longform.stitching import WindowTranscript, parse_window, stitch
from whisper_t5x.longform.windows import Batch, Window, bucket_size, pause_windows, split_windows, window_params

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
PROGRESS_MIN_WINDOWS = 4  # a progress bar only for more windows than this
SILENCE_PEAK = 1e-4  # windows quieter than this (-80 dBFS peak) are not decoded
EARLY_STOP_S = 3.0  # a window whose text stops this long before its owned end gets a continuation
# ... where its owned end is a pause (pause-aligned windows): speech should reach it, so a shorter gap counts.
EARLY_STOP_AT_PAUSE_S = 1.0

__all__ = ["FlaxWhisperPipeline", "FlaxWhisperPipline", "DEFAULT_BATCH_SIZE"]

_GENERATE_KEYS = {
    "num_beams", "max_length", "max_new_tokens", "temperature", "prompt_ids", "length_penalty", "seed",
    "compression_ratio_threshold", "logprob_threshold", "no_speech_threshold", "suppress_tokens",
    "begin_suppress_tokens", "task", "language", "return_timestamps",
    "condition_on_previous_text", "hallucination_silence_threshold",
}


@dataclasses.dataclass
class _Prepared:
    """A batch ready to decode: its rows and host (or device) features."""

    batch: Batch
    features: Any  # (rows, n_mels, 3000) float32, or (rows, 480000) audio for device features
    silent: List[Window]  # silent windows met since the previous batch (not decoded)


@dataclasses.dataclass
class _InputInfo:
    index: int
    num_samples: int
    num_windows: int


class _Stop(Exception):
    pass


def _is_single(inputs: Any) -> bool:
    if isinstance(inputs, (list, tuple)):
        # A flat list of numbers is one waveform, not a list of inputs.
        return len(inputs) > 0 and all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                                       for x in inputs)
    return True


class FlaxWhisperPipeline:
    """Long-form Whisper transcription with batched, compiled JAX decoding.

    Args:
      checkpoint: a named model (``"base"``, ``"tiny.en"``), a local checkpoint
        path or a hub id (see :mod:`whisper_t5x.checkpoints`); or a
        ``(model, params)`` pair.
      dtype: compute dtype (``jnp.float32``, ``jnp.bfloat16``, ``jnp.float16``);
        half-precision dtypes also store the parameters in that dtype.
      batch_size: windows decoded together (default 8).
      max_length: default length of generated sequences (tokens from
        ``<|startoftranscript|>``; default the model's 448).
      partitioner: a ``partitioning.PjitPartitioner``; parameters are sharded
        with it (see :meth:`shard_params`) and batches split over its data axis.
      compile_cache: ``True`` (default: JAX's persistent compilation cache in
        ``~/.cache/whisper_t5x/jax`` or ``$WHISPER_T5X_CACHE``, see
        :mod:`whisper_t5x.compile_cache`), a directory, or ``False``.
      fallback: a :class:`whisper_t5x.longform.fallback.FallbackConfig` (default: on,
        openai-whisper's thresholds), or ``False`` for greedy decoding only.
      feature_backend: ``"numpy"`` (host, float64, in the loader thread),
        ``"jax"`` (on the device) or ``"auto"`` (numpy on CPU, jax on
        accelerators).
      silence_threshold: windows whose peak amplitude is below this are not
        decoded (empty text); ``0`` decodes everything.
      decode_with_timestamps: decode with timestamp tokens even when
        ``return_timestamps=False`` (default True, as openai-whisper's
        ``transcribe`` does): Whisper skips or truncates speech in long
        windows far more often without them, and the stitcher places seams
        by time as well as text. ``False`` decodes with ``<|notimestamps|>``
        unless timestamps are requested (Hugging Face's behaviour; fewer
        tokens, but measurably worse on long-form audio).
      continue_early_stops: when a window's timestamped text stops well
        before the end of the audio it owns, decode a continuation window
        from its last timestamp (see :meth:`_continue_early_stops`).
      cut_at_pauses: begin and end windows in pauses of the speech where there
        are any (neighbours overlap by 2-5 s; see
        :func:`whisper_t5x.longform.windows.pause_windows`) instead of the fixed
        overlapping layout of ``chunk_length_s`` / ``stride_length_s``, which
        is then used only where no pause is found; only when decoding with
        timestamps. Default False: on 10 min of espeak-ng speech (``base``)
        it decoded 30 windows at 7.38% WER against the fixed layout's 31 at
        7.21%, because Whisper often leaves out a window's last seconds and
        each such window then needs a continuation.
    """

    def __init__(
        self,
        checkpoint: Any = "base",
        dtype: Any = jnp.float32,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        partitioner: Any = None,
        compile_cache: Union[bool, str, os.PathLike] = True,
        fallback: Union[None, bool, fb.FallbackConfig] = None,
        feature_backend: str = "auto",
        silence_threshold: float = SILENCE_PEAK,
        decode_with_timestamps: bool = True,
        continue_early_stops: bool = True,
        cut_at_pauses: bool = False,
    ):
        from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

        if compile_cache is not False:
            _compile_cache_module().enable_compile_cache(
                None if compile_cache is True else compile_cache, enabled=True if compile_cache is not True else None
            )
        self.dtype = jnp.dtype(dtype)
        if isinstance(checkpoint, tuple):
            self.model, params = checkpoint
        else:
            half = self.dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            self.model, params = FlaxWhisperForConditionalGeneration.from_pretrained(
                checkpoint, dtype=self.dtype, param_dtype=self.dtype if half else jnp.float32, _do_init=False
            )
        self.checkpoint = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else None
        self.tokenizer = self.model.tokenizer
        if self.tokenizer is None:
            raise ValueError("the checkpoint has no tokenizer.json: the pipeline needs one to produce text")
        self.config = self.model.config
        self.special = self.config.special_tokens
        self.n_mels = self.config.num_mel_bins
        self.batch_size = self._check_batch_size(batch_size or DEFAULT_BATCH_SIZE)
        self.max_length = max_length
        if fallback is None or fallback is True:
            fallback = fb.FallbackConfig()
        elif fallback is False:
            fallback = fb.FallbackConfig(temperatures=(0.0,))
        self.fallback = fallback
        if feature_backend not in ("auto", "numpy", "jax"):
            raise ValueError(f"feature_backend must be 'auto', 'numpy' or 'jax', got {feature_backend!r}")
        if feature_backend == "auto":
            feature_backend = "numpy" if jax.default_backend() == "cpu" else "jax"
        self.feature_backend = feature_backend
        self.silence_threshold = float(silence_threshold)
        self.decode_with_timestamps = bool(decode_with_timestamps)
        self.continue_early_stops = bool(continue_early_stops)
        self.cut_at_pauses = bool(cut_at_pauses)
        self._host_params = params
        self._params = params
        self._param_axes = None
        self.partitioner = None
        self._fns: Dict[Any, Any] = {}
        self._seen: set = set()
        self._jit_features = None
        if partitioner is not None:
            self.partitioner = partitioner
            self._shard_with(partitioner)

    # ------------------------------------------------------------------ params / sharding
    @property
    def params(self) -> Any:
        """The parameters decoding uses (sharded device arrays after :meth:`shard_params`)."""
        return self._params

    @params.setter
    def params(self, value: Any) -> None:
        self._params = value
        self._host_params = value
        self._fns.clear()

    def shard_params(self, num_mp_partitions: int = 1, logical_axis_rules: Any = None, params: Any = None) -> None:
        """Shard the parameters over a ("data", "model") mesh of all devices.

        ``num_mp_partitions`` devices hold slices of each parameter (model
        parallelism); the rest form the data axis that batches are split over
        (``batch_size`` must be a multiple of its size). ``logical_axis_rules``
        default to :func:`partitioning.standard_logical_axis_rules`.
        """
        from partitioning import PjitPartitioner

        part = PjitPartitioner(num_partitions=num_mp_partitions, logical_axis_rules=logical_axis_rules)
        if params is not None:
            self._host_params = params
        self._shard_with(part)

    def _shard_with(self, part: Any) -> None:
        from partitioning import InferenceState

        host = jax.tree_util.tree_map(np.asarray, jax.device_get(self._host_params))
        state = InferenceState.create({"params": host, "params_axes": self.model.params_axes})
        axes = part.get_mesh_axes(state).params
        self._params = part.shard_host_params(host, axes)
        self._param_axes = axes
        self.partitioner = part
        self._fns.clear()
        self._check_batch_size(self.batch_size)

    def _data_size(self) -> int:
        return 1 if self.partitioner is None else int(self.partitioner.data_mesh_size)

    def _check_batch_size(self, batch_size: Any) -> int:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        data = self._data_size() if hasattr(self, "partitioner") else 1
        if batch_size % data:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the data-parallel size {data}")
        return batch_size

    # ------------------------------------------------------------------ compiled calls
    def _generate_fn(self, options: Any) -> Any:
        fn = self._fns.get(options)
        if fn is not None:
            return fn
        if self.partitioner is None:
            fn = self.model._generate_fn(options)
        else:
            from jax.sharding import PartitionSpec as P

            from whisper_t5x.decoding import generate as decoding

            module = self.model.module

            def run(params, features, prompt, temperature, rng):
                return decoding.generate(module, params, features, options, prompt, temperature, rng)

            fn = self.partitioner.partition(
                run,
                in_axis_resources=(self._param_axes, P("data"), None, None, None),
                out_axis_resources=P("data"),
            )
        self._fns[options] = fn
        return fn

    def _features_on_device(self, audio: np.ndarray) -> Any:
        if self._jit_features is None:
            from whisper_t5x.audio.features import log_mel_spectrogram

            n_mels = self.n_mels
            self._jit_features = jax.jit(lambda x: log_mel_spectrogram(x, n_mels=n_mels))
        return self._jit_features(jnp.asarray(audio))

    def _dispatch(self, features: Any, options: Any, prompt: Any, temperature: float, rng: Any):
        """Start decoding (asynchronously); returns device arrays."""
        if self.feature_backend == "jax" and features.ndim == 2:
            features = self._features_on_device(features)
        return self._generate_fn(options)(self._params, features, prompt, jnp.float32(temperature), rng)

    # ------------------------------------------------------------------ host side
    def _window_features(self, clips: List[np.ndarray], rows: Sequence[Optional[Window]]) -> np.ndarray:
        """Features (or, for device features, padded audio) of a batch; padding rows repeat the last window."""
        from whisper_t5x.audio.features import N_SAMPLES, log_mel_spectrogram_np, pad_or_trim

        clips = list(clips) + [clips[-1]] * (len(rows) - len(clips))
        if self.feature_backend == "jax":
            return np.stack([pad_or_trim(c, N_SAMPLES) for c in clips]).astype(np.float32)
        return log_mel_spectrogram_np(clips, n_mels=self.n_mels)

    def _producer(self, items, chunk, stride, batch_size, out_q, infos, stop, store, pauses=False):
        """Loader thread: audio -> windows -> batches with features, into ``out_q``."""

        def put(msg):
            while True:
                if stop.is_set():
                    raise _Stop()
                try:
                    out_q.put(msg, timeout=0.1)
                    return
                except queue.Full:
                    continue

        try:
            pending: List[Tuple[Window, np.ndarray]] = []
            silent: List[Window] = []

            def emit(final=False):
                nonlocal pending, silent
                while len(pending) >= batch_size or (final and pending):
                    take, pending = pending[:batch_size], pending[batch_size:]
                    size = batch_size if len(take) == batch_size else bucket_size(
                        len(take), batch_size, self._data_size())
                    rows = tuple(w for w, _ in take) + (None,) * (size - len(take))
                    feats = self._window_features([a for _, a in take], rows)
                    put(("batch", _Prepared(Batch(rows), feats, silent)))
                    silent = []
                if final and silent:
                    put(("batch", _Prepared(Batch(()), None, silent)))
                    silent = []

            multiple = len(items) > 1
            for i, item in enumerate(items):
                try:
                    audio = load_audio(item, SAMPLE_RATE)
                except AudioError as e:
                    if multiple:
                        raise AudioError(f"input {i}: {e}") from e
                    raise
                if store is not None and audio.shape[0] > chunk:
                    store[i] = audio  # kept for continuation windows
                if pauses:
                    windows = pause_windows(audio, chunk, stride, input_index=i)
                else:
                    windows = split_windows(audio.shape[0], chunk, stride, input_index=i)
                infos[i] = _InputInfo(i, int(audio.shape[0]), len(windows))
                put(("input", infos[i]))
                for w in windows:
                    clip = audio[w.start:w.end]
                    if self.silence_threshold > 0 and (clip.size == 0 or float(np.abs(clip).max()) < self.silence_threshold):
                        silent.append(w)
                    else:
                        pending.append((w, clip))
                emit()
            emit(final=True)
            put(("done", None))
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            try:
                put(("error", e))
            except _Stop:
                pass

    def _decode_texts(self, sequences: np.ndarray) -> List[str]:
        eot = self.special.eot
        out = []
        for row in sequences:
            ids = row.tolist()
            if eot in ids:
                ids = ids[: ids.index(eot)]
            out.append(self.tokenizer.decode([t for t in ids if t < eot]))
        return out

    def _fallback(self, prep: _Prepared, host: Dict[str, np.ndarray], ctx: "_CallContext", batch_no: int):
        """Apply the temperature fallback to one decoded batch; returns per real row (sequence, language token)."""
        rows = [k for k, w in enumerate(prep.batch.rows) if w is not None]
        seqs = {k: host["sequences"][k] for k in rows}
        langs = {k: int(host["language_token"][k]) for k in rows}
        texts = dict(zip(rows, self._decode_texts(np.stack([seqs[k] for k in rows]))))
        logp = {k: float(host["avg_logprob"][k]) for k in rows}
        nsp = {k: float(host["no_speech_prob"][k]) for k in rows}
        cfg = ctx.fallback
        status = {k: fb.judge(texts[k], logp[k], nsp[k], cfg) for k in rows}
        retry = [k for k in rows if status[k] == fb.RETRY] if cfg.enabled else []
        temps = {k: float(cfg.temperatures[0]) if cfg.temperatures else 0.0 for k in rows}
        best = {k: (seqs[k], langs[k], texts[k], logp[k], nsp[k], temps[k]) for k in retry}
        for step, temperature in enumerate(cfg.temperatures[1:], start=1):
            if not retry:
                break
            size = bucket_size(len(retry), prep.batch.size, self._data_size()) if len(retry) <= prep.batch.size else len(retry)
            idx = retry + [retry[-1]] * (size - len(retry))
            feats = prep.features[np.asarray(idx)]
            rng = jax.random.fold_in(jax.random.fold_in(ctx.rng, batch_no), step)
            options = ctx.options_for(temperature)
            out = jax.device_get(self._dispatch(feats, options, ctx.prompt, temperature, rng))
            new_texts = self._decode_texts(np.asarray(out.sequences)[: len(retry)])
            still = []
            for j, k in enumerate(retry):
                seq, lang = np.asarray(out.sequences[j]), int(out.language_token[j])
                lp, ns = float(out.avg_logprob[j]), float(out.no_speech_prob[j])
                verdict = fb.judge(new_texts[j], lp, ns, cfg)
                if verdict == fb.RETRY:
                    if fb.better(new_texts[j], lp, best[k][2], best[k][3], cfg):
                        best[k] = (seq, lang, new_texts[j], lp, ns, float(temperature))
                    still.append(k)
                else:
                    seqs[k], langs[k], status[k] = seq, lang, verdict
                    logp[k], nsp[k], temps[k] = lp, ns, float(temperature)
            ctx.stats["fallback_decodes"] += len(retry)
            retry = still
        for k in retry:
            seqs[k], langs[k], _, logp[k], nsp[k], temps[k] = best[k]
        result = {}
        for k in rows:
            stats = (logp[k], nsp[k], temps[k])
            if status[k] == fb.SILENT:
                ctx.stats["silent_windows"] += 1
                result[k] = (np.asarray([self.special.eot], np.int32), langs[k], stats)
            else:
                result[k] = (seqs[k], langs[k], stats)
        return result

    def _language_code(self, token: int) -> Optional[str]:
        if not self.config.is_multilingual:
            return "en"
        return self.tokenizer.id_to_code.get(int(token))

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        inputs: Any,
        task: Optional[str] = None,
        language: Union[None, str, int] = None,
        return_timestamps: bool = False,
        return_language: bool = False,
        chunk_length_s: float = 30.0,
        stride_length_s: Optional[float] = None,
        batch_size: Optional[int] = None,
        generate_kwargs: Optional[Dict[str, Any]] = None,
        progress: Optional[bool] = None,
        long_form: str = "chunked",
    ) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """Transcribe (or translate, ``task="translate"``) one input or a list of inputs.

        ``inputs``: a path (any format ffmpeg reads), encoded bytes, a 1-D
        float array at 16 kHz, a dict ``{"array", "sampling_rate"}``, or a list
        of these (batched together; the result is then a list). Returns
        ``{"text": str, "chunks": [{"timestamp": (start, end), "text": str}]}``
        plus ``"language"`` when ``return_language``.

        ``long_form``: ``"chunked"`` (default: windows of all inputs decoded
        in parallel and stitched) or ``"sequential"`` (OpenAI's algorithm:
        each window starts at the previous one's last complete timestamp and
        is conditioned on its text; inputs share batches, windows of one input
        run one after another; ``chunks`` are its segments; see
        :mod:`whisper_t5x.longform.sequential`).

        ``return_timestamps="word"``: word-level timestamps; the inputs are
        then decoded with the sequential long-form algorithm
        (:func:`whisper_t5x.longform.sequential.pipeline_word_timestamps`) and
        ``chunks`` holds one ``{"text": word, "timestamp": (start, end)}`` per
        word.

        ``generate_kwargs``: ``num_beams``, ``max_length`` (or
        ``max_new_tokens``), ``temperature`` (a float: that temperature only,
        no fallback; a sequence: the fallback schedule), ``prompt_ids``,
        ``length_penalty``, ``seed``, ``compression_ratio_threshold``,
        ``logprob_threshold``, ``no_speech_threshold``, ``suppress_tokens``,
        ``begin_suppress_tokens``; also ``task`` / ``language`` /
        ``return_timestamps`` overriding the arguments.
        """
        gk = dict(generate_kwargs or {})
        unknown = sorted(set(gk) - _GENERATE_KEYS)
        if unknown:
            raise TypeError(f"unsupported generate_kwargs {unknown}; supported: {sorted(_GENERATE_KEYS)}")
        task = gk.pop("task", task)
        language = gk.pop("language", language)
        return_timestamps = gk.pop("return_timestamps", return_timestamps)
        if long_form not in ("chunked", "sequential"):
            raise ValueError(f"long_form must be 'chunked' or 'sequential', got {long_form!r}")
        if long_form == "sequential" and not isinstance(return_timestamps, str):
            from whisper_t5x.longform.sequential import pipeline_word_timestamps

            return pipeline_word_timestamps(self, inputs, task=task, language=language,
                                            return_language=return_language, batch_size=batch_size,
                                            generate_kwargs=gk, word_timestamps=False)
        if isinstance(return_timestamps, str):
            if return_timestamps != "word":
                raise ValueError(f"return_timestamps must be True, False or 'word', got {return_timestamps!r}")
            from whisper_t5x.longform.sequential import pipeline_word_timestamps

            return pipeline_word_timestamps(self, inputs, task=task, language=language,
                                            return_language=return_language, batch_size=batch_size,
                                            generate_kwargs=gk)
        return_timestamps = bool(return_timestamps)
        batch_size = self._check_batch_size(batch_size if batch_size is not None else self.batch_size)
        chunk, stride = window_params(chunk_length_s, stride_length_s, SAMPLE_RATE)
        ctx = _CallContext(self, task, language, return_timestamps or self.decode_with_timestamps, gk)

        single = _is_single(inputs)
        items = [inputs] if single else list(inputs)
        if not items:
            return []
        infos: Dict[int, _InputInfo] = {}
        transcripts: Dict[int, List[WindowTranscript]] = {i: [] for i in range(len(items))}
        store: Optional[Dict[int, np.ndarray]] = {} if (ctx.return_timestamps and self.continue_early_stops) else None
        out_q: "queue.Queue" = queue.Queue(maxsize=2)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._producer,
            # Pause-aligned seams rely on timestamps to place the cut (see whisper_t5x.longform.stitching.find_seam).
            args=(items, chunk, stride, batch_size, out_q, infos, stop, store,
                  self.cut_at_pauses and ctx.return_timestamps),
            name="whisper_t5x-loader", daemon=True,
        )
        bar = _Progress(progress)
        started = time.perf_counter()
        thread.start()
        try:
            in_flight = None
            batch_no = 0
            while True:
                kind, payload = out_q.get()
                if kind == "error":
                    raise payload
                if kind == "input":
                    bar.add_total(payload.num_windows)
                    continue
                if kind == "done":
                    break
                prep: _Prepared = payload
                for w in prep.silent:
                    transcripts[w.input_index].append(self._empty(w))
                bar.update(len(prep.silent))
                if prep.batch.size == 0:
                    continue
                t0 = time.perf_counter()  # before dispatch: compilation happens there
                dispatched = (prep, self._dispatch(prep.features, ctx.options, ctx.prompt, ctx.first_temperature,
                                                   jax.random.fold_in(ctx.rng, batch_no)), t0, batch_no)
                batch_no += 1
                if in_flight is not None:
                    self._finish(in_flight, ctx, transcripts, bar)
                in_flight = dispatched
            if in_flight is not None:
                self._finish(in_flight, ctx, transcripts, bar)
            if store:
                self._continue_early_stops(store, transcripts, chunk, batch_size, ctx, bar, batch_no)
        finally:
            stop.set()
            bar.close()
            thread.join(timeout=5)

        results = []
        for i in range(len(items)):
            info = infos[i]
            out = stitch(transcripts[i], self.tokenizer.decode, info.num_samples / SAMPLE_RATE,
                         ctx.return_timestamps, chunks="segments" if return_timestamps else "windows")
            result = {"text": out["text"], "chunks": out["chunks"]}
            if return_language:
                result["language"] = out["language"] if self.config.is_multilingual else "en"
            results.append(result)
        logger.debug("transcribed %d input(s) in %.2f s (%s)", len(items), time.perf_counter() - started, ctx.stats)
        self.last_stats = dict(ctx.stats, seconds=time.perf_counter() - started)
        return results[0] if single else results

    def _continue_early_stops(self, store, transcripts, chunk, batch_size, ctx, bar, batch_no) -> None:
        """Re-decode from where a window's text stopped early (openai-whisper's "seek"), once.

        Whisper sometimes ends a window's transcript long before the end of its
        audio (most often on repetitive speech). When the text of a window stops
        more than ``EARLY_STOP_S`` (``EARLY_STOP_AT_PAUSE_S`` where that end is a
        pause) before the end of the audio it owns and that
        remaining audio is not quiet, a *continuation* window starting at the
        last timestamp is decoded; the stitcher cuts the stopped window at its
        last timestamp and takes the text after it from the continuation.
        """
        extra: List[Window] = []
        clips: List[np.ndarray] = []
        for i, trs in transcripts.items():
            audio = store.get(i)
            if audio is None:
                continue
            for tr in list(trs):
                w = tr.window
                owned_end = w.owned[1] / SAMPLE_RATE
                at_pause = w.stride_right > 0 and any(
                    o.window.start == w.owned[1] and o.window.stride_left == 0 for o in trs)
                limit = EARLY_STOP_AT_PAUSE_S if at_pause else EARLY_STOP_S
                if not tr.tokens or tr.last_timestamp is None or owned_end - tr.last_timestamp < limit:
                    continue
                start = int(round(tr.last_timestamp * SAMPLE_RATE))
                rest, whole = audio[start:w.owned[1]], audio[w.start:w.end]
                if rest.size == 0 or np.percentile(np.abs(rest), 95) < 0.1 * np.percentile(np.abs(whole), 95):
                    continue  # the model stopped at a real pause
                tr.content_end = tr.last_timestamp
                end = min(start + chunk, audio.shape[0])
                extra.append(Window(i, -1, start, end, 0, 0, int(audio.shape[0])))
                clips.append(audio[start:end])
        if not extra:
            return
        ctx.stats["continuation_windows"] += len(extra)
        bar.add_total(len(extra))
        for k in range(0, len(extra), batch_size):
            take = extra[k:k + batch_size]
            size = bucket_size(len(take), batch_size, self._data_size())
            rows = tuple(take) + (None,) * (size - len(take))
            prep = _Prepared(Batch(rows), self._window_features(clips[k:k + batch_size], rows), [])
            t0 = time.perf_counter()
            out = self._dispatch(prep.features, ctx.options, ctx.prompt, ctx.first_temperature,
                                 jax.random.fold_in(ctx.rng, batch_no))
            self._finish((prep, out, t0, batch_no), ctx, transcripts, bar)
            batch_no += 1

    def _empty(self, w: Window) -> WindowTranscript:
        return WindowTranscript(w, [], None, False)

    def _finish(self, in_flight, ctx: "_CallContext", transcripts, bar) -> None:
        prep, out, t0, batch_no = in_flight
        host = {k: np.asarray(v) for k, v in jax.device_get(out)._asdict().items()}
        key = (ctx.options, prep.batch.size)
        if key not in self._seen:
            self._seen.add(key)
            logger.info("first batch of %d windows (compile + decode) took %.2f s", prep.batch.size,
                        time.perf_counter() - t0)
        decided = self._fallback(prep, host, ctx, batch_no)
        for k, w in enumerate(prep.batch.rows):
            if w is None:
                continue
            seq, lang, (logp, nsp, temp) = decided[k]
            tr = parse_window(seq, w, self.special.eot, self.special.timestamp_begin, ctx.return_timestamps,
                              SAMPLE_RATE, language=self._language_code(lang))
            tr = dataclasses.replace(tr, avg_logprob=logp, no_speech_prob=nsp, temperature=temp)
            transcripts[w.input_index].append(tr)
        ctx.stats["windows"] += len(prep.batch.windows)
        ctx.stats["padding_rows"] += prep.batch.num_padding
        bar.update(len(prep.batch.windows))


class _CallContext:
    """Per-call decoding settings resolved from the arguments."""

    def __init__(self, pipe: FlaxWhisperPipeline, task, language, return_timestamps, gk: Dict[str, Any]):
        self.return_timestamps = return_timestamps
        prompt = gk.get("prompt_ids")
        if prompt is not None:
            prompt = np.asarray(prompt, np.int32).reshape(-1)
            if prompt.size == 0:
                prompt = None
        self.prompt = None if prompt is None else jnp.asarray(prompt)
        max_length = gk.get("max_length", pipe.max_length)
        if gk.get("max_new_tokens") is not None:
            max_length = int(gk["max_new_tokens"]) + 4  # + sot, language, task, notimestamps
        base = pipe.fallback
        thresholds = {k: gk[k] for k in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold")
                      if k in gk}
        temps = fb.temperature_schedule(gk.get("temperature"), base.temperatures)
        self.fallback = dataclasses.replace(base, temperatures=temps, **thresholds)
        self.first_temperature = self.fallback.temperatures[0]
        self._kwargs = dict(
            task=task,
            language=language,
            return_timestamps=return_timestamps,
            max_length=max_length,
            length_penalty=gk.get("length_penalty"),
            prompt_length=0 if prompt is None else int(prompt.size),
            suppress_tokens=gk.get("suppress_tokens"),
            begin_suppress_tokens=gk.get("begin_suppress_tokens"),
        )
        self._model = pipe.model
        self.num_beams = int(gk.get("num_beams", 1))
        self.options = self.options_for(self.first_temperature)
        self.rng = jax.random.PRNGKey(int(gk.get("seed", 0)))
        self.stats = {"windows": 0, "padding_rows": 0, "fallback_decodes": 0, "silent_windows": 0,
                      "continuation_windows": 0}

    def options_for(self, temperature: float):
        sample = temperature > 0
        return self._model.decode_options(
            num_beams=1 if sample else self.num_beams, sample=sample, **self._kwargs
        )


class _Progress:
    """A tqdm bar created once more than PROGRESS_MIN_WINDOWS windows are known."""

    def __init__(self, progress: Optional[bool]):
        if progress is None:
            progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
            self.min_windows = PROGRESS_MIN_WINDOWS
        else:
            self.min_windows = 0
        self.enabled = bool(progress)
        self.total = 0
        self.done = 0
        self.bar = None

    def add_total(self, n: int) -> None:
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()
        elif self.enabled and self.total > self.min_windows:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="window", desc="transcribing", initial=self.done)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _compile_cache_module():
    return compile_cache


FlaxWhisperPipline = FlaxWhisperPipeline  # Whisper JAX's spelling
