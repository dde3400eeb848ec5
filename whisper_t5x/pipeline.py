"""``FlaxWhisperPipeline``: long-form transcription and translation of files, bytes and arrays.

::

    from whisper_t5x import FlaxWhisperPipeline

    pipe = FlaxWhisperPipeline("base")                  # or "tiny.en", a path, a hub id
    result = pipe.transcribe("audio.mp3")               # a Transcription: text, segments, language, duration
    out = pipe("audio.mp3", return_timestamps=True)     # the seed's dict: {"text": ..., "chunks": [...]}
    outs = pipe(["a.wav", "b.flac"], batch_size=8)       # a list of such dicts

Every call is the same three steps (``../DESIGN.md``): a *segmenter* cuts
each input into rows to decode, the one :class:`~whisper_t5x.longform.decoder.Decoder`
decodes the rows of all inputs in full batches (with temperature fallback),
and an *assembler* turns them into a :class:`~whisper_t5x.results.Transcription`.
The long-form modes differ only in the first and last step:

* ``"chunked"``: overlapping 30 s windows, stitched (:mod:`whisper_t5x.longform.chunked`);
* ``"sequential"``: openai-whisper's seek, conditioned on previous text
  (:mod:`whisper_t5x.longform.sequential`); also what chunked word timestamps use;
* ``"vad"``: Silero VAD speech merged into rows of at most 30 s, no overlap
  (:mod:`whisper_t5x.longform.vad`): each second of speech is decoded once.

Language: with ``language=None`` a multilingual checkpoint detects the language
of every window separately (and transcribes each in its own language); a
result's ``language`` is the one most windows with text were detected in.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x import compile_cache, host_memory
from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.chunked import ChunkedSettings, transcribe_chunked
from whisper_t5x.longform.decoder import Decoder, DecodeRequest
from whisper_t5x.longform.vad import BATCHED_VAD, VadSettings
from whisper_t5x.longform.windows import window_params
from whisper_t5x.longform.word_segments import SUBTITLE_LIMITS, SegmentLimits
from whisper_t5x.results import Transcription, as_pipeline_dict

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
# On a CPU the engine encodes new rows one at a time whatever the decode batch: an insert's XLA temporaries
# (encoder + cross K/V) are ~75 MB a row for base (8 rows ~600 MB, 2 rows 150 MB, 1 row 43 MB), one insert program
# is compiled instead of one per bucket (~48 MB of code each), and a CPU encodes no faster per window in a batch
# (base: 739 vs 759 ms CPU per window at 1 and 2 rows, 2-core Xeon). Accelerators: the batch.
CPU_ENGINE_ENCODE_BATCH = 1
DEFAULT_SLOTS_PER_ROW = 1  # the engine's decode slots per encoder row (benchmarks/engine_occupancy.py)
PROGRESS_MIN_WINDOWS = 4  # a progress bar only for more windows than this
SILENCE_PEAK = 1e-4  # windows quieter than this (-80 dBFS peak) are not decoded
LONG_FORM_MODES = ("auto", "chunked", "sequential", "vad")

__all__ = ["FlaxWhisperPipeline", "FlaxWhisperPipline", "DEFAULT_BATCH_SIZE", "LONG_FORM_MODES", "PromptError",
           "check_prompt_ids"]

_GENERATE_KEYS = {
    "num_beams", "max_length", "max_new_tokens", "temperature", "prompt_ids", "length_penalty", "seed",
    "compression_ratio_threshold", "logprob_threshold", "no_speech_threshold", "suppress_tokens",
    "begin_suppress_tokens", "task", "language", "return_timestamps",
    "condition_on_previous_text", "hallucination_silence_threshold", "vad_filter",
}


# Device files an accelerator exposes, and the JAX build that drives it.
_ACCELERATOR_HINTS = (("/dev/nvidia0", "an NVIDIA GPU", 'pip install -U "jax[cuda13]"'),
                      ("/dev/accel0", "a TPU", 'pip install -U "jax[tpu]"'),
                      ("/dev/vfio/0", "a TPU", 'pip install -U "jax[tpu]"'))


def _engine_encode_batch() -> int:
    return CPU_ENGINE_ENCODE_BATCH if jax.default_backend() == "cpu" else 1 << 30


def accelerator_hint(backend: Optional[str] = None) -> Optional[str]:
    """A warning when this machine has an accelerator but JAX runs on the CPU (a CPU-only jaxlib), else None."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return None
    for path, what, command in _ACCELERATOR_HINTS:
        if os.path.exists(path):
            return (f"this machine has {what} ({path}) but JAX runs on the CPU: install the matching JAX build "
                    f"({command}, then `pip install -e .` again) and check with "
                    f"`python -c 'import jax; print(jax.devices())'`")
    return None


class PromptError(ValueError):
    """``prompt_ids`` that are not token ids of the model's vocabulary."""


def check_prompt_ids(prompt: Any, vocab_size: int) -> Tuple[int, ...]:
    """``prompt_ids`` as a tuple of ints, each in ``[0, vocab_size)``; anything else is a :class:`PromptError`."""
    if prompt is None:
        return ()
    if isinstance(prompt, (str, bytes)):
        raise PromptError("prompt_ids must be token ids (integers), got text: encode it with the tokenizer first "
                          "(pipe.tokenizer.encode(' ' + text))")
    try:
        arr = np.asarray(prompt)
    except Exception as e:  # ragged or odd objects
        raise PromptError(f"prompt_ids must be a sequence of integers, got {type(prompt).__name__}") from e
    if arr.size and arr.dtype.kind not in "iu":
        raise PromptError(f"prompt_ids must be integers, got {arr.dtype} values")
    ids = arr.reshape(-1)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise PromptError(f"prompt_ids must lie in [0, {vocab_size}) (the model's vocabulary), got {int(bad[0])}")
    return tuple(int(t) for t in ids)


def _is_single(inputs: Any) -> bool:
    if isinstance(inputs, (list, tuple)):
        # A flat list of numbers is one waveform, not a list of inputs.
        return len(inputs) > 0 and all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                                       for x in inputs)
    return True


@dataclasses.dataclass(frozen=True)
class ResolvedCall:
    """One call's arguments resolved: what to decode and how to assemble it (:meth:`FlaxWhisperPipeline.resolve`)."""

    request: DecodeRequest
    prompt: Tuple[int, ...]
    mode: str  # "chunked" | "sequential" | "vad"
    words: bool  # word timestamps
    segment_timestamps: bool  # return_timestamps=True: sentence-level segment times asked for
    segments: str  # chunked: "segments" or "windows"
    extra: Dict[str, Any]  # sequential-only options


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
        with it (see :meth:`shard_params`) and batches split over its data axis;
        the engine's slots are split over its data axis too.
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
        timestamps. Default False: it measured no better than the fixed
        layout (``benchmarks/pipeline_options.py``).
      engine: VAD rows (the default long-form mode), chunked windows and the
        sequential seek (without word timestamps: each input a chain of rows,
        several inputs side by side) decode through the slot engine
        (:mod:`whisper_t5x.longform.engine`: rows join and leave a running
        batch, so no row waits for the longest of its batch); greedy tokens
        are the Decoder's. Beam search and word timestamps use the Decoder.
        Under a partitioner the engine's slots are split over its data axis
        (:meth:`Engine.shard`). ``False``: the Decoder always.
      decode_slots: the engine's decode slots (default ``batch_size``: on a
        CPU a step costs in proportion to its rows, so more slots than rows
        did not pay). On a CPU the engine encodes new rows one at a time
        (:data:`CPU_ENGINE_ENCODE_BATCH`: bounded memory, same text).
      weights_dtype: storage of the dense kernels (:mod:`whisper_t5x.model.quantize`): ``"float32"``
        (default, text unchanged); ``"int8"``: encoder, decoder and vocabulary W8A8 (float32 scale per
        output channel, int8 x int8 products); ``"int8_step"`` / ``"bfloat16"``: the decoder step and
        vocabulary only. With ``dtype=bfloat16`` every product is bf16 x bf16 with float32
        accumulation (AMX / avx512_bf16). Not with a partitioner.
      return_freed_memory: on a CPU with glibc, pin malloc's mmap and trim thresholds and trim the
        heap after each call, so memory XLA frees goes back (:mod:`whisper_t5x.host_memory`); a
        process's own ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` wins.
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
        vad: VadSettings = BATCHED_VAD,
        segment_limits: SegmentLimits = SUBTITLE_LIMITS,
        engine: bool = True,
        decode_slots: Optional[int] = None,
        weights_dtype: str = "float32",
        return_freed_memory: bool = True,
    ):
        from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

        hint = accelerator_hint()
        if hint:
            logger.warning(hint)
        if compile_cache is not False:
            _compile_cache_module().enable_compile_cache(
                None if compile_cache is True else compile_cache, enabled=True if compile_cache is not True else None
            )
        self.return_freed_memory = bool(return_freed_memory) and jax.default_backend() == "cpu"
        self.dtype = jnp.dtype(dtype)
        if isinstance(checkpoint, tuple):
            self.model, params = checkpoint
        else:
            # Half precision loads half-precision weights, unless some are stored int8: those are quantised
            # from float32, then every other float leaf is cast (the int8 kernels keep float32 scales).
            half = self.dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and str(weights_dtype) == "float32"
            self.model, params = FlaxWhisperForConditionalGeneration.from_pretrained(
                checkpoint, dtype=self.dtype, param_dtype=self.dtype if half else jnp.float32, _do_init=False
            )
        self.checkpoint = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else None
        from whisper_t5x.model.quantize import cast_float_weights, store_weights, weights_dtype_of

        if params is not None and weights_dtype_of(params) == "float32":
            params = store_weights(params, weights_dtype)  # checks the name; "float32" keeps the tree
            if weights_dtype != "float32" and self.dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
                params = cast_float_weights(params, self.dtype)
        self.weights_dtype = weights_dtype if params is None else weights_dtype_of(params)
        self.tokenizer = self.model.tokenizer
        if self.tokenizer is None:
            raise ValueError("the checkpoint has no tokenizer.json: the pipeline needs one to produce text")
        self.config = self.model.config
        self.special = self.config.special_tokens
        self.n_mels = self.config.num_mel_bins
        self.partitioner = None
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
        self.vad = vad
        self.segment_limits = segment_limits
        self._host_params = params
        self.decoder = Decoder(self.model, params, self.batch_size, feature_backend)
        self.engine = None
        if engine:
            from whisper_t5x.longform.engine import Engine

            slots = int(decode_slots) if decode_slots else DEFAULT_SLOTS_PER_ROW * self.batch_size
            self.engine = Engine(self.model, slots=slots, encode_batch=min(self.batch_size, _engine_encode_batch()),
                                 stats=self.decoder.stats)
        if self.return_freed_memory:  # above a decoding step's logits (slots x vocabulary floats)
            slots = self.engine.slots if self.engine is not None else self.batch_size
            host_memory.return_freed_memory(host_memory.threshold_for(slots * self.config.vocab_size * 4))
        self.last_stats: Dict[str, Any] = {}
        if partitioner is not None:
            self._shard_with(partitioner)

    # ------------------------------------------------------------------ params / sharding
    @property
    def params(self) -> Any:
        """The parameters decoding uses (sharded device arrays after :meth:`shard_params`)."""
        return self.decoder.params

    @params.setter
    def params(self, value: Any) -> None:
        self._host_params = value
        self.decoder.set_params(value)
        self.partitioner = None
        if self.engine is not None:
            self.engine.shard(None)

    @property
    def active_engine(self) -> Any:
        """The slot engine calls decode on: the pipeline's, unless it refused the partitioner (then sharded
        calls decode with the Decoder); None without an engine."""
        if self.engine is None or (self.partitioner is not None and self.engine.partitioner is None):
            return None
        return self.engine

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
        from whisper_t5x.model.quantize import WeightsDtypeError, weights_dtype_of

        if weights_dtype_of(self._host_params) != "float32":
            raise WeightsDtypeError("stored (bfloat16/int8) decoder weights are for one device; "
                                    "shard float32 parameters (weights_dtype='float32')")

        host = jax.tree_util.tree_map(np.asarray, jax.device_get(self._host_params))
        state = InferenceState.create({"params": host, "params_axes": self.model.params_axes})
        axes = part.get_mesh_axes(state).params
        self.partitioner = part
        self._check_batch_size(self.batch_size)
        self.decoder.set_params(part.shard_host_params(host, axes), part, axes)
        self._shard_engine(part, axes)

    def _shard_engine(self, part: Any, axes: Any) -> None:
        """Spread the engine's slots over ``part``'s data axis (slots rounded up to a multiple of it); a mesh
        the engine refuses leaves sharded calls to the Decoder."""
        if self.engine is None:
            return
        from whisper_t5x.longform.engine import EngineMeshError

        data = int(part.data_mesh_size)
        self.engine.slots = -(-self.engine.slots // data) * data
        try:
            self.engine.shard(part, axes)
        except EngineMeshError as e:
            self.engine.shard(None)
            logger.info("sharded calls decode with the Decoder: %s", e)

    def _data_size(self) -> int:
        return 1 if self.partitioner is None else int(self.partitioner.data_mesh_size)

    def _check_batch_size(self, batch_size: Any) -> int:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        data = self._data_size()
        if batch_size % data:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the data-parallel size {data}")
        return batch_size

    # ------------------------------------------------------------------ arguments
    def resolve(self, task: Optional[str] = None, language: Optional[str] = None, return_timestamps: Any = False,
                generate_kwargs: Optional[Dict[str, Any]] = None, long_form: str = "auto") -> ResolvedCall:
        """``transcribe``'s arguments checked and resolved (named errors before any audio is read): the
        decode request, prompt, long-form mode and assembly options. The server uses it to route a request."""
        gk = dict(generate_kwargs or {})
        unknown = sorted(set(gk) - _GENERATE_KEYS)
        if unknown:
            raise TypeError(f"unsupported generate_kwargs {unknown}; supported: {sorted(_GENERATE_KEYS)}")
        task = gk.pop("task", task)
        language = gk.pop("language", language)
        return_timestamps = gk.pop("return_timestamps", return_timestamps)
        if long_form not in LONG_FORM_MODES:
            raise ValueError(f"long_form must be one of {LONG_FORM_MODES}, got {long_form!r}")
        if isinstance(return_timestamps, str) and return_timestamps != "word":
            raise ValueError(f"return_timestamps must be True, False or 'word', got {return_timestamps!r}")
        words = return_timestamps == "word"
        mode = "sequential" if words and long_form == "chunked" else long_form
        timestamps = bool(return_timestamps) or self.decode_with_timestamps or mode == "sequential"
        prompt = check_prompt_ids(gk.get("prompt_ids"), self.config.vocab_size)
        max_length = gk.get("max_length", self.max_length)
        if gk.get("max_new_tokens") is not None:
            max_length = int(gk["max_new_tokens"]) + 4  # + sot, language, task, notimestamps
        thresholds = {k: gk[k] for k in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold")
                      if k in gk}
        temps = fb.temperature_schedule(gk.get("temperature"), self.fallback.temperatures)
        request = DecodeRequest(
            task=task, language=language, timestamps=timestamps, max_length=max_length,
            num_beams=int(gk.get("num_beams", 1)), length_penalty=gk.get("length_penalty"),
            suppress_tokens=None if gk.get("suppress_tokens") is None else tuple(gk["suppress_tokens"]),
            begin_suppress_tokens=(None if gk.get("begin_suppress_tokens") is None
                                   else tuple(gk["begin_suppress_tokens"])),
            fallback=dataclasses.replace(self.fallback, temperatures=temps, **thresholds),
            seed=int(gk.get("seed", 0)),
        )
        self.decoder.options(request)  # validates task / language / beams now, before any audio is read
        extra = {k: gk[k] for k in ("condition_on_previous_text", "hallucination_silence_threshold", "vad_filter")
                 if k in gk}
        return ResolvedCall(request, prompt, mode, words, return_timestamps is True,
                            "segments" if timestamps else "windows", extra)

    # ------------------------------------------------------------------ calls
    def transcribe(
        self,
        inputs: Any,
        task: Optional[str] = None,
        language: Union[None, str, int] = None,
        return_timestamps: Union[bool, str] = False,
        chunk_length_s: float = 30.0,
        stride_length_s: Optional[float] = None,
        batch_size: Optional[int] = None,
        generate_kwargs: Optional[Dict[str, Any]] = None,
        progress: Optional[bool] = None,
        long_form: str = "auto",
    ) -> Union[Transcription, List[Transcription]]:
        """Transcribe (or translate, ``task="translate"``) one input or a list of inputs.

        ``inputs``: a path (any format ffmpeg reads), encoded bytes, a 1-D
        float array at 16 kHz, a dict ``{"array", "sampling_rate"}``, or a list
        of these (their rows share batches; the result is then a list).
        Returns a :class:`~whisper_t5x.results.Transcription` per input.

        ``long_form``: ``"auto"`` (default: ``"vad"`` for inputs of any length
        and any timestamp request; chosen by ``benchmarks/vad_options.py`` and
        ``benchmarks/segment_times.py``), ``"vad"`` (speech
        found by Silero VAD, merged into rows of at most 30 s without overlap,
        decoded without timestamp tokens; with ``return_timestamps`` segment
        and word times come from the cross-attention alignment, segments cut at
        sentence ends, pauses, removed silences and ``segment_limits``),
        ``"chunked"`` (windows of all inputs
        decoded in parallel and stitched), ``"sequential"`` (openai-whisper's seek:
        each window starts at the previous one's last complete timestamp and
        is conditioned on its text; inputs share batches; ``generate_kwargs``
        ``vad_filter=True`` runs it on the speech only).
        ``return_timestamps="word"``: segments carry ``words`` (chunked:
        decoded with the sequential algorithm). Without timestamps (and with
        ``decode_with_timestamps=False``) segments are one per window.

        ``generate_kwargs``: ``num_beams``, ``max_length`` (or
        ``max_new_tokens``), ``temperature`` (a float: that temperature only,
        no fallback; a sequence: the fallback schedule), ``prompt_ids`` (the
        last 223 tokens are used), ``length_penalty``, ``seed``,
        ``compression_ratio_threshold``, ``logprob_threshold``,
        ``no_speech_threshold``, ``suppress_tokens``,
        ``begin_suppress_tokens``, ``condition_on_previous_text`` and
        ``hallucination_silence_threshold`` (sequential); also ``task`` /
        ``language`` / ``return_timestamps`` overriding the arguments.
        """
        call = self.resolve(task, language, return_timestamps, generate_kwargs, long_form)
        batch_size = self._check_batch_size(batch_size if batch_size is not None else self.batch_size)
        chunk, stride = window_params(chunk_length_s, stride_length_s, SAMPLE_RATE)
        single = _is_single(inputs)
        items = [inputs] if single else list(inputs)
        if not items:
            return []
        self.decoder.batch_size = batch_size
        self.decoder.begin_call()
        before = dict(self.decoder.stats)
        started = time.perf_counter()
        stats: Dict[str, Any] = {}
        bar = _Progress(progress)
        settings = ChunkedSettings(chunk, stride, batch_size, self.silence_threshold,
                                   self.cut_at_pauses and call.request.timestamps, self.continue_early_stops)
        try:
            results = self._run(call.mode, items, call, settings, bar, stats)
        finally:
            bar.close()
            self.decoder.batch_size = self.batch_size
            if self.return_freed_memory:
                host_memory.trim()
        decoded = {k: self.decoder.stats[k] - before.get(k, 0) for k in self.decoder.stats}
        stats.update(fallback_decodes=decoded.get("fallback_decodes", 0), silent_windows=decoded.get("silent_rows", 0))
        stats.update({k: v for k, v in decoded.items() if k.startswith("engine_") and v})
        self.last_stats = dict(stats, seconds=time.perf_counter() - started)
        logger.debug("transcribed %d input(s) in %.2f s (%s)", len(items), self.last_stats["seconds"], stats)
        return results[0] if single else results

    def _run(self, mode: str, items: List[Any], call: ResolvedCall, settings: ChunkedSettings, bar: "_Progress",
             stats: Dict[str, Any]) -> List[Transcription]:
        """One long-form algorithm over ``items``: segmenter, the Decoder, assembler."""
        engine = self.active_engine  # None: the Decoder (no engine, or a mesh it does not run on)
        if engine is not None:
            engine.encode_batch = min(settings.batch_size, engine.slots, _engine_encode_batch())
            if engine.data_size > 1:  # on a mesh: rows split over the data axis (a CPU's cap is per process)
                engine.encode_batch = min(settings.batch_size, engine.slots)
        if mode == "sequential":
            return self._sequential(items, call, engine)
        if mode in ("auto", "vad"):
            from whisper_t5x.longform.vad import transcribe_vad

            return transcribe_vad(self.decoder, items, call.request, self.vad, call.prompt, call.words, stats,
                                  segment_timestamps=call.segment_timestamps, limits=self.segment_limits,
                                  progress=bar.with_unit("row"), engine=engine)
        return transcribe_chunked(self.decoder, items, call.request, settings, call.prompt, call.segments, bar,
                                  stats, engine=engine)

    def _sequential(self, items: List[Any], call: ResolvedCall, engine: Any = None) -> List[Transcription]:
        from whisper_t5x.longform.sequential import SequentialOptions, run_sequential

        extra = dict(call.extra)
        vad_filter = bool(extra.pop("vad_filter", False))
        options = SequentialOptions(word_timestamps=call.words, initial_prompt=call.prompt, **extra)
        if not vad_filter:
            return run_sequential(self.decoder, items, call.request, options, engine=engine)
        from whisper_t5x.audio.loading import load_audio
        from whisper_t5x.longform.vad import speech_only, to_original

        audio = [load_audio(x, SAMPLE_RATE) for x in items]
        speech = [speech_only(a, self.vad) for a in audio]
        results = run_sequential(self.decoder, [s for s, _ in speech], call.request, options, engine=engine)
        return [to_original(r, row, a.shape[0] / SAMPLE_RATE) for r, (_, row), a in zip(results, speech, audio)]

    def __call__(self, inputs: Any, *, return_language: bool = False, **options: Any
                 ) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """:meth:`transcribe`, returned as the seed's dictionary.

        ``{"text": str, "chunks": [{"timestamp": (start, end), "text": str}]}``
        plus ``"language"`` (a code such as ``"en"``) when ``return_language``.
        With ``return_timestamps=True`` chunks are timestamped segments with
        their decoding statistics; with ``"word"``, one chunk per word.
        ``options`` are :meth:`transcribe`'s keyword arguments.
        """
        results = self.transcribe(inputs, **options)
        return_timestamps = (options.get("generate_kwargs") or {}).get("return_timestamps",
                                                                      options.get("return_timestamps", False))

        def view(r: Transcription) -> Dict[str, Any]:
            out = as_pipeline_dict(r, return_timestamps, return_language)
            if return_language and not self.config.is_multilingual:
                out["language"] = "en"
            return out

        return [view(r) for r in results] if isinstance(results, list) else view(results)


class _Progress:
    """A tqdm bar created once more than PROGRESS_MIN_WINDOWS windows are known."""

    def __init__(self, progress: Optional[bool]):
        if progress is None:
            progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
            self.min_windows = PROGRESS_MIN_WINDOWS
        else:
            self.min_windows = 0
        self.enabled = bool(progress)
        self.unit = "window"
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

            self.bar = tqdm(total=self.total, unit=self.unit, desc="transcribing", initial=self.done)

    def with_unit(self, unit: str) -> "_Progress":
        """This bar, counting ``unit`` (set before it is shown)."""
        self.unit = unit
        return self

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
