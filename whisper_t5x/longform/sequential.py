"""Sequential long-form transcription: openai-whisper's ``transcribe`` algorithm, batched over files.

::

    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.longform.sequential import transcribe_sequential

    model, params = FlaxWhisperForConditionalGeneration.from_pretrained("base", _do_init=False)
    [result] = transcribe_sequential(model, params, ["talk.mp3"], word_timestamps=True)
    result["text"], result["segments"], result["chunks"], result["language"]

Unlike the chunked pipeline (:mod:`whisper_t5x.pipeline`: overlapping windows
decoded independently, then stitched), each file is decoded one 30 s window
at a time, every window starting where the previous one's transcript ended:

1. the window is the 30 s of log-mel frames at the file's ``seek`` position
   (the log-mel is computed once per file over the whole padded waveform, as
   openai-whisper does; frames past the end of the audio are zeros);
2. it is decoded with timestamps, conditioned on the previous text (the last
   223 tokens since the last reset, after ``<|startofprev|>``;
   ``initial_prompt`` before the first window) unless
   ``condition_on_previous_text=False``;
3. temperature fallback: a rejected decode (too repetitive, or mean log
   probability below ``logprob_threshold``) is redone at the next
   temperature; the last attempt is kept if all are rejected. A window with
   ``no_speech_prob > no_speech_threshold`` whose mean log probability is
   not above ``logprob_threshold`` is skipped as silence;
4. the transcript is cut into segments at the timestamp pairs; ``seek``
   advances to the last complete timestamp, or by the whole window when the
   transcript ends with a single timestamp (nothing left open) or has no
   timestamp pair (:func:`window_segments`); with ``word_timestamps`` it
   advances to the end of the last word instead, unless the window ended
   with a single timestamp;
5. the conditioning is reset after a window decoded at a temperature above
   0.5 (its text is not trusted).

Batching: several files are decoded at once, one row per file; each step
decodes the current window of every unfinished file (at most ``batch_size``
files at a time; a finished file's row is given to the next file).
``generate`` takes one prompt *length* per compiled program (``prompt_length``
is a static compile key) but accepts one prompt per row of that length, so
rows are **grouped by prompt length**. To keep the number of distinct
lengths (and compilations) small, a prompt longer than 16 tokens is cut to
the largest *bucket* length not above it (``prompt_buckets``, default 16,
32, 48, 64, 96, 128, 160, 192, 223), dropping its oldest tokens; pass
``prompt_buckets=None`` to condition on the exact prompt like openai-whisper
(one compilation per distinct length). Rows are also grouped by language
(a static key: the first window of a file with ``language=None`` is
decoded with language detection, the rest of the file in the detected
language) and by temperature (greedy or sampling); groups are padded to a
power of two rows (copies of the last row) so batch sizes compile once each.

``hallucination_silence_threshold`` (seconds) is implemented as in
openai-whisper and, as there, only acts with ``word_timestamps=True``:
segments that look hallucinated (words of low probability or implausible
durations) and are surrounded by silence longer than the threshold are
dropped and decoding resumes after them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x.longform import alignment as al
from whisper_t5x.longform import fallback as fb

logger = logging.getLogger(__name__)

__all__ = ["transcribe_sequential", "window_segments", "file_log_mel", "bucket_prompt_length",
           "DEFAULT_PROMPT_BUCKETS", "word_chunks", "pipeline_word_timestamps"]

from whisper_t5x.audio.constants import FRAMES_PER_SECOND, HOP_LENGTH, INPUT_STRIDE, N_FRAMES, SAMPLE_RATE, TIME_PRECISION  # noqa: F401 (re-exported)
SAMPLE_LEN = 224  # most tokens sampled per window (openai-whisper: n_text_ctx // 2)
DEFAULT_PROMPT_BUCKETS = (16, 32, 48, 64, 96, 128, 160, 192, 223)
_EXACT_BELOW = 16  # prompts shorter than this are always used whole
_PUNCTUATION = "\"'\u201c\u00bf([{-\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"


# --------------------------------------------------------------------------- features
def file_log_mel(audio: np.ndarray, n_mels: int = 80, block_frames: int = 6000) -> np.ndarray:
    """Log-mel of a whole file followed by 30 s of zeros: ``(n_mels, len(audio) // 160 + 3000)``.

    Same definition as :func:`whisper_t5x.audio.features.log_mel_spectrogram_np`
    but over the whole waveform, so the clamp at (max - 8) uses the file's
    maximum (openai-whisper's ``log_mel_spectrogram(audio, padding=N_SAMPLES)``).
    Computed in blocks of frames to bound memory on long files.
    """
    from whisper_t5x.audio.features import LOG_FLOOR, DYNAMIC_RANGE, N_FFT, hann_window, mel_filters

    x = np.concatenate([np.asarray(audio, np.float32).reshape(-1), np.zeros(N_FRAMES * HOP_LENGTH, np.float32)])
    x = x.astype(np.float64)
    n = x.shape[0]
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="reflect")
    num_frames = n // HOP_LENGTH  # the STFT's last frame is dropped
    filters = mel_filters(n_mels)
    window = hann_window(N_FFT)
    out = np.empty((n_mels, num_frames), np.float64)
    for lo in range(0, num_frames, block_frames):
        hi = min(num_frames, lo + block_frames)
        starts = np.arange(lo, hi) * HOP_LENGTH
        frames = x[starts[:, None] + np.arange(N_FFT)[None, :]]
        spectrum = np.fft.rfft(frames * window, axis=-1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        out[:, lo:hi] = np.log10(np.maximum(filters @ power.T, LOG_FLOOR))
    out = (np.maximum(out, out.max() - DYNAMIC_RANGE) + 4.0) / 4.0
    return out.astype(np.float32)


def _mel_window(mel: np.ndarray, seek: int, size: int) -> np.ndarray:
    """``size`` frames from ``seek``, zero-padded to a whole window."""
    segment = mel[:, seek:seek + size]
    if segment.shape[1] < N_FRAMES:
        segment = np.pad(segment, ((0, 0), (0, N_FRAMES - segment.shape[1])))
    return segment


# --------------------------------------------------------------------------- seek logic
def window_segments(
    tokens: Sequence[int],
    timestamp_begin: int,
    seek: int,
    segment_size: int,
    eot: Optional[int] = None,
) -> Tuple[List[Dict[str, Any]], int, bool]:
    """Cut one window's sampled tokens into segments and find where the next window starts.

    ``tokens``: the sampled ids (after the forced prefix, end-of-text
    excluded); ``seek``: the window's first mel frame; ``segment_size``: mel
    frames of audio in the window. Returns ``(segments, next_seek,
    single_timestamp_ending)``, each segment ``{"start", "end", "tokens"}``
    with absolute seconds and its tokens (timestamps included).

    * With consecutive timestamps (``<|a|><|b|>``, a segment boundary) the
      text is cut after each pair. If the transcript ends with a single
      timestamp after text, the last segment closes there and the whole
      window is consumed; otherwise the next window starts at the last
      timestamp of the last complete segment (the open text after it is
      dropped and decoded again).
    * Without any timestamp pair the whole output is one segment, ending at
      its last timestamp (or at the window end), and the window is consumed.
    """
    tokens = [int(t) for t in tokens]
    if eot is not None and eot in tokens:
        tokens = tokens[:tokens.index(eot)]
    time_offset = seek * HOP_LENGTH / SAMPLE_RATE
    is_ts = [t >= timestamp_begin for t in tokens]
    single_timestamp_ending = is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    segments: List[Dict[str, Any]] = []
    if consecutive:
        slices = list(consecutive)
        if single_timestamp_ending:
            slices.append(len(tokens))
        last = 0
        for cut in slices:
            piece = tokens[last:cut]
            segments.append(dict(
                start=time_offset + (piece[0] - timestamp_begin) * TIME_PRECISION,
                end=time_offset + (piece[-1] - timestamp_begin) * TIME_PRECISION,
                tokens=piece,
            ))
            last = cut
        if single_timestamp_ending:
            next_seek = seek + segment_size
        else:
            next_seek = seek + (tokens[last - 1] - timestamp_begin) * INPUT_STRIDE
    else:
        duration = segment_size * HOP_LENGTH / SAMPLE_RATE
        stamps = [t for t in tokens if t >= timestamp_begin]
        if stamps and stamps[-1] != timestamp_begin:
            duration = (stamps[-1] - timestamp_begin) * TIME_PRECISION
        segments.append(dict(start=time_offset, end=time_offset + duration, tokens=tokens))
        next_seek = seek + segment_size
    return segments, next_seek, single_timestamp_ending


def bucket_prompt_length(length: int, buckets: Optional[Sequence[int]] = DEFAULT_PROMPT_BUCKETS) -> int:
    """Prompt tokens kept for a prompt of ``length`` (see the module docstring)."""
    if buckets is None or length < _EXACT_BELOW:
        return length
    fitting = [b for b in sorted(buckets) if b <= length]
    return fitting[-1] if fitting else length


# --------------------------------------------------------------------------- state
@dataclasses.dataclass
class _File:
    index: int
    mel: np.ndarray
    content_frames: int
    language_token: Optional[int]
    initial_prompt_tokens: List[int]
    seek: int = 0
    prompt_reset_since: int = 0
    last_speech_timestamp: float = 0.0
    all_tokens: List[int] = dataclasses.field(default_factory=list)
    segments: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames


@dataclasses.dataclass
class _Decoded:
    tokens: List[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    language_token: int


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class _Decoder:
    """Groups rows by static decoding configuration and runs the compiled generate loop."""

    def __init__(self, model, params, task, batch_size, prompt_buckets, seed):
        self.model = model
        self.params = params
        self.task = task
        self.batch_size = batch_size
        self.prompt_buckets = prompt_buckets
        self.special = model.config.special_tokens
        self.tokenizer = model.tokenizer
        self.rng = jax.random.PRNGKey(seed)
        self.calls = 0
        self.compiled: set = set()

    def _prefix_length(self) -> int:
        return 2 if self.model.config.is_multilingual else 0  # language, task (timestamps on)

    def decode(self, rows: List[Tuple[np.ndarray, List[int], Optional[int]]], temperature: float) -> List[_Decoded]:
        """``rows``: (mel window, prompt tokens, language token or None for detection)."""
        results: List[Optional[_Decoded]] = [None] * len(rows)
        groups: Dict[Tuple[int, Optional[int]], List[int]] = {}
        prompts = []
        for k, (_, prompt, lang) in enumerate(rows):
            prompt = list(prompt)[-(SAMPLE_LEN - 1):]
            keep = bucket_prompt_length(len(prompt), self.prompt_buckets)
            prompt = prompt[len(prompt) - keep:] if keep else []
            prompts.append(prompt)
            groups.setdefault((len(prompt), lang), []).append(k)
        for (plen, lang), members in groups.items():
            for lo in range(0, len(members), self.batch_size):
                chunk = members[lo:lo + self.batch_size]
                self._run(chunk, rows, prompts, plen, lang, temperature, results)
        return results  # type: ignore[return-value]

    def _run(self, chunk, rows, prompts, plen, lang, temperature, results):
        model = self.model
        size = min(_next_pow2(len(chunk)), max(self.batch_size, len(chunk)))
        size = max(size, len(chunk))
        idx = chunk + [chunk[-1]] * (size - len(chunk))
        feats = np.stack([rows[k][0] for k in idx]).astype(np.float32)
        context = 1 + plen if plen else 0
        prefix = self._prefix_length()
        max_length = min(1 + prefix + SAMPLE_LEN, model.config.max_target_positions - context)
        options = model.decode_options(
            task=self.task, language=lang if model.config.is_multilingual else None, return_timestamps=True,
            max_length=max_length, prompt_length=plen, sample=temperature > 0,
        )
        prompt = jnp.asarray(np.asarray([prompts[k] for k in idx], np.int32)) if plen else None
        rng = jax.random.fold_in(self.rng, self.calls)
        self.calls += 1
        key = (options, size)
        if key not in self.compiled:
            self.compiled.add(key)
            logger.info("sequential: compiling generate for %d rows, prompt length %d", size, plen)
        out = jax.device_get(model._generate_fn(options)(self.params, jnp.asarray(feats), prompt,
                                                         jnp.float32(temperature), rng))
        sequences = np.asarray(out.sequences)
        begin = 1 + prefix
        for j, k in enumerate(chunk):
            seq = sequences[j, begin:].tolist()
            if self.special.eot in seq:
                seq = seq[:seq.index(self.special.eot)]
            text = self.tokenizer.decode([t for t in seq if t < self.special.eot]).strip()
            results[k] = _Decoded(
                tokens=seq, text=text, avg_logprob=float(out.avg_logprob[j]),
                no_speech_prob=float(out.no_speech_prob[j]), compression_ratio=fb.compression_ratio(text),
                temperature=float(temperature), language_token=int(out.language_token[j]),
            )


# --------------------------------------------------------------------------- hallucinations
def _word_anomaly_score(word: Dict[str, Any]) -> float:
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_segment_anomaly(segment: Optional[Dict[str, Any]]) -> bool:
    if segment is None or not segment.get("words"):
        return False
    words = [w for w in segment["words"] if w["word"] not in _PUNCTUATION][:8]
    score = sum(_word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return next((s for s in segments if s.get("words")), None)


def _last_word_end(segments: List[Dict[str, Any]]) -> Optional[float]:
    for s in reversed(segments):
        if s.get("words"):
            return s["words"][-1]["end"]
    return segments[-1]["end"] if segments else None


# --------------------------------------------------------------------------- main
def transcribe_sequential(
    model: Any,
    params: Any,
    audio_list: Sequence[Any],
    language: Union[None, str, int] = None,
    task: str = "transcribe",
    condition_on_previous_text: bool = True,
    initial_prompt: Union[None, str, Sequence[int]] = None,
    temperatures: Union[float, Sequence[float]] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    compression_ratio_threshold: Optional[float] = 2.4,
    logprob_threshold: Optional[float] = -1.0,
    no_speech_threshold: Optional[float] = 0.6,
    hallucination_silence_threshold: Optional[float] = None,
    word_timestamps: bool = False,
    batch_size: int = 8,
    prompt_buckets: Optional[Sequence[int]] = DEFAULT_PROMPT_BUCKETS,
    prepend_punctuations: str = al.PREPEND_PUNCTUATIONS,
    append_punctuations: str = al.APPEND_PUNCTUATIONS,
    seed: int = 0,
    trim_silence: bool = True,
) -> List[Dict[str, Any]]:
    """Transcribe (or translate) each input with openai-whisper's sequential algorithm.

    ``audio_list``: inputs :func:`whisper_t5x.audio.loading.load_audio` accepts
    (paths, bytes, 16 kHz arrays, ``{"array", "sampling_rate"}`` dicts); a
    single input that is not a list is accepted too (the result is still a
    list). Returns per input::

        {"text": str,
         "segments": [{"id", "seek", "start", "end", "text", "tokens", "temperature",
                       "avg_logprob", "compression_ratio", "no_speech_prob"[, "words"]}],
         "chunks": [{"timestamp": (start, end), "text": str}],   # non-empty segments
         "language": code}

    ``initial_prompt``: text (encoded with a leading space, as openai-whisper
    does) or token ids, conditioning the first window.

    ``words`` (with ``word_timestamps=True``) are ``{"word", "start", "end",
    "probability"}`` in absolute seconds. Their starts are moved past leading
    silence (:func:`whisper_t5x.longform.alignment.trim_leading_silence`) unless
    ``trim_silence=False``, which gives openai-whisper's word timings exactly
    (the trimming never changes the text, the segments or where windows start).
    """
    from whisper_t5x.audio.loading import load_audio

    if model.tokenizer is None:
        raise ValueError("the checkpoint has no tokenizer.json: sequential transcription needs one")
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(temperatures, (int, float)):
        temperatures = (float(temperatures),)
    cfg = fb.FallbackConfig(tuple(temperatures), compression_ratio_threshold, logprob_threshold, no_speech_threshold)
    if isinstance(audio_list, (str, bytes, dict)) or (isinstance(audio_list, np.ndarray) and audio_list.ndim == 1):
        audio_list = [audio_list]
    tokenizer = model.tokenizer
    special = model.config.special_tokens
    multilingual = model.config.is_multilingual
    forced_language = model.language_token(language) if (language is not None and multilingual) else None
    if language is not None and not multilingual:
        model.language_token(language)  # validates
    if not multilingual and task == "translate":
        raise ValueError("this is an English-only checkpoint: it cannot translate (task='translate')")
    if initial_prompt is None or isinstance(initial_prompt, str):
        initial_prompt_tokens = tokenizer.encode(" " + initial_prompt.strip()) if initial_prompt else []
    else:  # token ids (e.g. a pipeline's prompt_ids)
        initial_prompt_tokens = [int(t) for t in np.asarray(initial_prompt).reshape(-1)]
    n_mels = model.config.num_mel_bins
    decoder = _Decoder(model, params, task, int(batch_size), prompt_buckets, seed)

    queue = list(range(len(audio_list)))
    files: Dict[int, _File] = {}
    active: List[_File] = []

    def admit():
        while queue and len(active) < batch_size:
            i = queue.pop(0)
            audio = load_audio(audio_list[i])
            mel = file_log_mel(audio, n_mels)
            f = _File(index=i, mel=mel, content_frames=mel.shape[1] - N_FRAMES,
                      language_token=forced_language if multilingual else special.language_ids[0],
                      initial_prompt_tokens=list(initial_prompt_tokens),
                      all_tokens=list(initial_prompt_tokens))
            files[i] = f
            if not f.done:
                active.append(f)

    admit()
    while active:
        sizes = [min(N_FRAMES, f.content_frames - f.seek) for f in active]
        windows = [_mel_window(f.mel, f.seek, s) for f, s in zip(active, sizes)]
        prompts = [f.all_tokens[f.prompt_reset_since:] for f in active]
        langs = [f.language_token if multilingual else None for f in active]
        decoded = _decode_with_fallback(decoder, list(zip(windows, prompts, langs)), cfg)

        steps = []  # (file, window, size, result, segments, single_ending, previous_seek)
        for f, window, size, res in zip(active, windows, sizes, decoded):
            if multilingual and f.language_token is None:
                f.language_token = res.language_token  # detected on the first window, kept for the file
            if no_speech_threshold is not None:
                skip = res.no_speech_prob > no_speech_threshold
                if logprob_threshold is not None and res.avg_logprob > logprob_threshold:
                    skip = False
                if skip:
                    f.seek += size
                    continue
            previous_seek = f.seek
            segments, next_seek, single_ending = window_segments(res.tokens, special.timestamp_begin, f.seek, size)
            for s in segments:
                s.update(seek=previous_seek, temperature=res.temperature, avg_logprob=res.avg_logprob,
                         compression_ratio=res.compression_ratio, no_speech_prob=res.no_speech_prob)
            f.seek = next_seek
            steps.append((f, window, size, res, segments, single_ending, previous_seek))

        if word_timestamps and steps:
            alignments = al.find_alignment(
                model, params, np.stack([s[1] for s in steps]),
                [[t for seg in s[4] for t in seg["tokens"] if t < special.eot] for s in steps],
                num_frames=[s[2] for s in steps],
                language_tokens=[s[0].language_token if multilingual else None for s in steps],
                task=task,
            )
        for n, (f, window, size, res, segments, single_ending, previous_seek) in enumerate(steps):
            if word_timestamps:
                time_offset = previous_seek * HOP_LENGTH / SAMPLE_RATE
                window_end_time = (previous_seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
                skip = _word_step(
                    f, segments, alignments[n], time_offset, window_end_time, size, single_ending, previous_seek,
                    hallucination_silence_threshold, special.eot, prepend_punctuations, append_punctuations)
                if skip:
                    continue
                if trim_silence:
                    loudness = al.frame_loudness(window, size)
                    al.trim_leading_silence([w for s in segments for w in s["words"]], loudness, time_offset)
            for s in segments:
                if s["start"] == s["end"] or tokenizer.decode([t for t in s["tokens"] if t < special.eot]).strip() == "":
                    s["text"], s["tokens"] = "", []
                    if word_timestamps:
                        s["words"] = []
                else:
                    s["text"] = tokenizer.decode([t for t in s["tokens"] if t < special.eot])
            for s in segments:
                f.segments.append(dict(id=len(f.segments), **s))
                f.all_tokens.extend(s["tokens"])
            if not condition_on_previous_text or res.temperature > 0.5:
                f.prompt_reset_since = len(f.all_tokens)

        active = [f for f in active if not f.done]
        admit()

    results = []
    for i in range(len(audio_list)):
        f = files[i]
        text = tokenizer.decode([t for t in f.all_tokens[len(f.initial_prompt_tokens):] if t < special.eot])
        segments = [_public_segment(s) for s in f.segments]
        lang_token = f.language_token
        code = tokenizer.id_to_code.get(int(lang_token), "en") if (multilingual and lang_token is not None) else "en"
        results.append(dict(
            text=text,
            segments=segments,
            chunks=[{"timestamp": (round(s["start"], 2), round(s["end"], 2)), "text": s["text"]}
                    for s in segments if s["text"].strip()],
            language=code,
        ))
    return results


def _public_segment(s: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: s[k] for k in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                             "compression_ratio", "no_speech_prob")}
    out["start"], out["end"] = round(float(out["start"]), 2), round(float(out["end"]), 2)
    if "words" in s:
        out["words"] = s["words"]
    return out


def _decode_with_fallback(decoder: _Decoder, rows, cfg: fb.FallbackConfig) -> List[_Decoded]:
    """openai-whisper's ``decode_with_fallback`` for a batch of rows (the last attempt is kept)."""
    results: List[Optional[_Decoded]] = [None] * len(rows)
    pending = list(range(len(rows)))
    for temperature in cfg.temperatures:
        out = decoder.decode([rows[k] for k in pending], temperature)
        still = []
        for k, res in zip(pending, out):
            results[k] = res
            if fb.judge(res.text, res.avg_logprob, res.no_speech_prob, cfg) == fb.RETRY:
                still.append(k)
        pending = still
        if not pending:
            break
    return results  # type: ignore[return-value]


def _word_step(f: _File, segments, alignment, time_offset, window_end_time, size, single_ending, previous_seek,
               threshold, eot, prepend, append) -> bool:
    """Word timestamps for one window's segments, the word-based seek and the hallucination filter.

    Mutates ``segments`` (adds ``words``; may truncate it), ``f.seek`` and
    ``f.last_speech_timestamp``. Returns True when the whole window is to be
    skipped (a hallucination after a long silence at its start).
    """
    al.attach_words(segments, alignment, time_offset, f.last_speech_timestamp, eot, prepend, append)
    if not single_ending:
        last_end = _last_word_end(segments)
        if last_end is not None and last_end > time_offset:
            f.seek = round(last_end * FRAMES_PER_SECOND)
    if threshold is not None:
        if not single_ending:
            last_end = _last_word_end(segments)
            if last_end is not None and last_end > time_offset:
                if window_end_time - last_end > threshold:
                    f.seek = round(last_end * FRAMES_PER_SECOND)
                else:
                    f.seek = previous_seek + size
        first = _next_words_segment(segments)
        if first is not None and _is_segment_anomaly(first):
            gap = first["start"] - time_offset
            if gap > threshold:
                f.seek = previous_seek + round(gap * FRAMES_PER_SECOND)
                return True
        content_duration = f.content_frames / FRAMES_PER_SECOND
        segment_duration = size / FRAMES_PER_SECOND
        hal_last_end = f.last_speech_timestamp
        for si in range(len(segments)):
            segment = segments[si]
            if not segment.get("words"):
                continue
            if _is_segment_anomaly(segment):
                nxt = _next_words_segment(segments[si + 1:])
                hal_next_start = nxt["words"][0]["start"] if nxt is not None else time_offset + segment_duration
                silence_before = (segment["start"] - hal_last_end > threshold or segment["start"] < threshold
                                  or segment["start"] - time_offset < 2.0)
                silence_after = (hal_next_start - segment["end"] > threshold or _is_segment_anomaly(nxt)
                                 or window_end_time - segment["end"] < 2.0)
                if silence_before and silence_after:
                    f.seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                    if content_duration - segment["end"] < threshold:
                        f.seek = f.content_frames
                    segments[si:] = []
                    break
            hal_last_end = segment["end"]
    last_end = _last_word_end(segments)
    if last_end is not None:
        f.last_speech_timestamp = last_end
    return False


# --------------------------------------------------------------------------- pipeline integration
def word_chunks(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Hugging Face's ``return_timestamps="word"`` chunks of a result: ``[{"text": word, "timestamp": (start, end)}]``."""
    return [{"text": w["word"], "timestamp": (w["start"], w["end"])}
            for s in result["segments"] for w in s.get("words", ())]


_SEGMENT_STATS = ("avg_logprob", "no_speech_prob", "compression_ratio", "temperature", "tokens", "seek")


def pipeline_word_timestamps(
    pipe: Any,
    inputs: Any,
    task: Optional[str] = None,
    language: Union[None, str, int] = None,
    return_language: bool = False,
    batch_size: Optional[int] = None,
    generate_kwargs: Optional[Dict[str, Any]] = None,
    word_timestamps: bool = True,
) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
    """``FlaxWhisperPipeline(..., return_timestamps="word")``: sequential decoding with word timestamps.

    ``pipe``: a :class:`whisper_t5x.pipeline.FlaxWhisperPipeline` (its model,
    parameters, batch size and fallback settings are used). Returns, per
    input, ``{"text", "chunks": [{"text": word, "timestamp": (start, end)}],
    "segments": [{"timestamp": (start, end), "text", "avg_logprob",
    "no_speech_prob", "compression_ratio", "temperature", "tokens", "seek"}]}``
    (+ ``"language"``),
    a list for a list of inputs. With ``word_timestamps=False`` (the
    pipeline's ``long_form="sequential"``) ``chunks`` are the segments. ``generate_kwargs``
    understood: ``temperature``, ``compression_ratio_threshold``,
    ``logprob_threshold``, ``no_speech_threshold``, ``prompt_ids``, ``seed``,
    ``condition_on_previous_text``, ``hallucination_silence_threshold``.
    """
    gk = dict(generate_kwargs or {})
    if isinstance(inputs, (list, tuple)) and not (inputs and all(
            isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in inputs)):
        items, single = list(inputs), False
    else:
        items, single = [inputs], True
    base = pipe.fallback
    temps = fb.temperature_schedule(gk.get("temperature"), base.temperatures)
    results = transcribe_sequential(
        pipe.model, pipe.params, items, language=language, task=task or "transcribe",
        condition_on_previous_text=gk.get("condition_on_previous_text", True),
        initial_prompt=gk.get("prompt_ids"), temperatures=temps,
        compression_ratio_threshold=gk.get("compression_ratio_threshold", base.compression_ratio_threshold),
        logprob_threshold=gk.get("logprob_threshold", base.logprob_threshold),
        no_speech_threshold=gk.get("no_speech_threshold", base.no_speech_threshold),
        hallucination_silence_threshold=gk.get("hallucination_silence_threshold"),
        word_timestamps=word_timestamps, batch_size=batch_size or pipe.batch_size, seed=int(gk.get("seed", 0)),
    )
    out = []
    for r in results:
        # Segments as the chunked pipeline's timestamped chunks, with openai-whisper's statistics.
        segments = [dict(timestamp=(seg["start"], seg["end"]), text=seg["text"],
                         **{k: seg.get(k) for k in _SEGMENT_STATS})
                    for seg in r["segments"] if seg.get("text", "").strip()]
        item = {"text": r["text"], "chunks": word_chunks(r) if word_timestamps else r["chunks"], "segments": segments}
        if return_language:
            item["language"] = r["language"]
        out.append(item)
    return out[0] if single else out
