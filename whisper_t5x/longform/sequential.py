"""Sequential long-form transcription: openai-whisper's ``transcribe`` algorithm, batched over files.

::

    from whisper_t5x import FlaxWhisperPipeline

    pipe = FlaxWhisperPipeline("base")
    result = pipe.transcribe("talk.mp3", long_form="sequential")     # a Transcription
    words = pipe.transcribe("talk.mp3", return_timestamps="word").words

    # or, on a bare model: transcribe_sequential(model, params, ["talk.mp3"], word_timestamps=True)

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
3. decoding and temperature fallback are the
   :class:`~whisper_t5x.longform.decoder.Decoder`'s (one policy for every
   mode: when every temperature is rejected the best attempt is kept, where
   openai-whisper keeps the last); a window judged silent
   (:func:`whisper_t5x.longform.fallback.is_silent`) is skipped;
4. the transcript is cut into segments at the timestamp pairs; ``seek``
   advances to the last complete timestamp, or by the whole window when the
   transcript ends with a single timestamp (nothing left open) or has no
   timestamp pair (:func:`whisper_t5x.longform.seek.window_segments`); with ``word_timestamps`` it
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
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from whisper_t5x.audio.constants import HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from whisper_t5x.longform import alignment as al
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.decoder import PROMPT_BUCKETS, Decoder, DecodeRequest, Row
from whisper_t5x.longform.seek import SeekState, file_log_mel, mel_window, window_segments, word_seek
from whisper_t5x.longform.segments import text_tokens
from whisper_t5x.results import Segment, Transcription, Word

logger = logging.getLogger(__name__)

__all__ = ["SequentialOptions", "run_sequential", "transcribe_sequential", "SAMPLE_LEN"]

SAMPLE_LEN = 224  # most tokens sampled per window (openai-whisper: n_text_ctx // 2)


@dataclasses.dataclass(frozen=True)
class SequentialOptions:
    """The seek algorithm's own options (decoding options are the :class:`DecodeRequest`'s)."""

    condition_on_previous_text: bool = True
    initial_prompt: Union[None, str, Sequence[int]] = None  # text (a leading space is added) or token ids
    hallucination_silence_threshold: Optional[float] = None
    word_timestamps: bool = False
    prepend_punctuations: str = al.PREPEND_PUNCTUATIONS
    append_punctuations: str = al.APPEND_PUNCTUATIONS
    trim_silence: bool = True


@dataclasses.dataclass
class _File(SeekState):
    index: int = 0
    mel: Optional[np.ndarray] = None
    language_token: Optional[int] = None
    initial_prompt_tokens: List[int] = dataclasses.field(default_factory=list)
    prompt_reset_since: int = 0
    all_tokens: List[int] = dataclasses.field(default_factory=list)
    segments: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


def _prompt_tokens(tokenizer: Any, prompt: Union[None, str, Sequence[int]]) -> List[int]:
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        return []
    if isinstance(prompt, str):
        return tokenizer.encode(" " + prompt.strip())
    return [int(t) for t in np.asarray(prompt).reshape(-1)]


def _typed_segment(s: Dict[str, Any], with_words: bool) -> Segment:
    words = None
    if with_words:
        words = tuple(Word(float(w["start"]), float(w["end"]), w["word"], float(w.get("probability", 0.0)))
                      for w in s.get("words") or ())
    return Segment(
        start=round(float(s["start"]), 2), end=round(float(s["end"]), 2), text=s["text"], tokens=tuple(s["tokens"]),
        avg_logprob=s["avg_logprob"], no_speech_prob=s["no_speech_prob"], compression_ratio=s["compression_ratio"],
        temperature=s["temperature"], words=words, seek=int(s["seek"]),
    )


def _open_input(item: Any, index: int, n_mels: int, language_token: Any, initial: Sequence[int],
                durations: Dict[int, float]) -> "_File":
    """An input's seek state: audio loaded, its duration recorded, its whole log-mel computed."""
    from whisper_t5x.audio.loading import load_audio

    audio = load_audio(item)
    durations[index] = audio.shape[0] / SAMPLE_RATE
    mel = file_log_mel(audio, n_mels)
    return _File(content_frames=mel.shape[1] - N_FRAMES, index=index, mel=mel, language_token=language_token,
                 initial_prompt_tokens=list(initial), all_tokens=list(initial))


def run_sequential(decoder: Decoder, audio_list: Sequence[Any], request: DecodeRequest,
                   options: SequentialOptions = SequentialOptions(), engine: Any = None) -> List[Transcription]:
    """Transcribe each input with openai-whisper's sequential algorithm; one :class:`Transcription` each.

    ``audio_list``: inputs :func:`whisper_t5x.audio.loading.load_audio` accepts.
    Segments keep openai-whisper's statistics and ``seek``; with
    ``options.word_timestamps`` they carry ``words`` (starts moved past
    leading silence unless ``trim_silence=False``, which gives openai-whisper's
    word timings exactly; the trimming never changes the text, the segments or
    where windows start).

    ``engine``: a :class:`~whisper_t5x.longform.engine.Engine` decodes the windows when it takes the
    request (one beam) and word timestamps are off: each input is a chain of rows, its next window put
    as the previous one ends, and the windows of several inputs share the slots (see :func:`_on_engine`).
    """
    model = decoder.model
    tokenizer = decoder.tokenizer
    special = decoder.special
    multilingual = decoder.config.is_multilingual
    if tokenizer is None:
        raise ValueError("the checkpoint has no tokenizer.json: sequential transcription needs one")
    decoder.options(request)  # validates task and language before any audio is read
    forced_language = model.language_token(request.language) if multilingual else special.language_ids[0]
    # Every window is decoded with timestamps, at most SAMPLE_LEN tokens, in its file's language.
    request = dataclasses.replace(request, timestamps=True, sample_len=SAMPLE_LEN, max_length=None, language=None)
    cfg = request.fallback
    words_on = options.word_timestamps
    initial = _prompt_tokens(tokenizer, options.initial_prompt)
    n_mels = decoder.config.num_mel_bins
    batch_size = decoder.batch_size

    queue = list(range(len(audio_list)))
    files: Dict[int, _File] = {}
    durations: Dict[int, float] = {}
    active: List[_File] = []

    def admit() -> None:
        while queue and len(active) < batch_size:
            i = queue.pop(0)
            f = files[i] = _open_input(audio_list[i], i, n_mels, forced_language, initial, durations)
            if not f.done:
                active.append(f)

    if engine is not None and not words_on and engine.supports(request, initial, prompted=True):
        return _on_engine(engine, decoder, audio_list, request, options, initial, forced_language)

    admit()
    while active:
        sizes = [min(N_FRAMES, f.content_frames - f.seek) for f in active]
        windows = [mel_window(f.mel, f.seek, s) for f, s in zip(active, sizes)]
        rows = [Row(w, tuple(f.all_tokens[f.prompt_reset_since:]), f.language_token if multilingual else None)
                for f, w in zip(active, windows)]
        decoded = decoder.decode(rows, request)

        steps = []  # (file, window, size, result, segments, single_ending, previous_seek)
        for f, window, size, res in zip(active, windows, sizes, decoded):
            step = _seek_step(f, res, size, special, multilingual)
            if step is not None:
                steps.append((f, window, size, res) + step)

        if words_on and steps:
            alignments = al.find_alignment(
                model, decoder.params, np.stack([s[1] for s in steps]),
                [[t for seg in s[4] for t in text_tokens(seg["tokens"], special.eot)] for s in steps],
                num_frames=[s[2] for s in steps],
                language_tokens=[s[0].language_token if multilingual else None for s in steps],
                task=request.task, programs=decoder.alignment_programs,
            )
        for n, (f, window, size, res, segments, single_ending, previous_seek) in enumerate(steps):
            if words_on:
                time_offset = previous_seek * HOP_LENGTH / SAMPLE_RATE
                window_end_time = (previous_seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
                skip = word_seek(
                    f, segments, alignments[n], time_offset, window_end_time, size, single_ending, previous_seek,
                    options.hallucination_silence_threshold, special.eot, options.prepend_punctuations,
                    options.append_punctuations)
                if skip:
                    continue
                if options.trim_silence:
                    loudness = al.frame_loudness(window, size)
                    al.trim_leading_silence([w for s in segments for w in s["words"]], loudness, time_offset)
            _keep_segments(f, segments, res, tokenizer, special, words_on, options)

        active = [f for f in active if not f.done]
        admit()
    return _results(audio_list, files, durations, tokenizer, special, multilingual, words_on)


def _seek_step(f: _File, res: Any, size: int, special: Any, multilingual: bool) -> Optional[tuple]:
    """A decoded window's segments and ``f``'s new seek: ``(segments, single_ending, previous_seek)``, or
    None for a silent window (skipped whole)."""
    if multilingual and f.language_token is None:
        f.language_token = res.language_token  # detected on the first window, kept for the file
    if res.silent:
        f.seek += size
        return None
    previous_seek = f.seek
    segments, next_seek, single_ending = window_segments(res.tokens, special.timestamp_begin, f.seek, size,
                                                         eot=special.eot)
    for s in segments:
        s.update(seek=previous_seek, temperature=res.temperature, avg_logprob=res.avg_logprob,
                 compression_ratio=res.compression_ratio, no_speech_prob=res.no_speech_prob)
    f.seek = next_seek
    return segments, single_ending, previous_seek


def _keep_segments(f: _File, segments: List[Dict[str, Any]], res: Any, tokenizer: Any, special: Any,
                   words_on: bool, options: SequentialOptions) -> None:
    """A window's segments get their text and join ``f``'s; its tokens condition the next window unless
    the conditioning is reset."""
    for s in segments:
        text = tokenizer.decode(text_tokens(s["tokens"], special.eot))
        if s["start"] == s["end"] or text.strip() == "":
            s["text"], s["tokens"] = "", []
            if words_on:
                s["words"] = []
        else:
            s["text"] = text
    for s in segments:
        f.segments.append(s)
        f.all_tokens.extend(s["tokens"])
    if not options.condition_on_previous_text or res.temperature > 0.5:
        f.prompt_reset_since = len(f.all_tokens)


def _on_engine(engine: Any, decoder: Decoder, audio_list: Sequence[Any], request: DecodeRequest,
               options: SequentialOptions, initial: List[int], forced_language: Optional[int]) -> List[Transcription]:
    """The seek on the slot engine: each input is a chain of rows. Its next window (prompted with its text
    so far, in its language) is queued when the previous one ends (in ``on_result``), so one input has one
    row in flight, and up to ``engine.slots`` inputs fill the slots side by side; no input waits for the
    others' windows. Greedy tokens (so the text) are those of the Decoder's batches."""
    tokenizer, special = decoder.tokenizer, decoder.special
    multilingual = decoder.config.is_multilingual
    n_mels = decoder.config.num_mel_bins
    waiting = list(range(len(audio_list)))
    files: Dict[int, _File] = {}
    durations: Dict[int, float] = {}
    ready: List[_File] = []  # inputs whose next window is to be queued
    sizes: Dict[int, int] = {}  # input -> frames of its window in flight
    windows = [0]  # windows queued so far (row keys)

    def admit() -> None:
        while waiting and len(sizes) + len(ready) < engine.slots:
            i = waiting.pop(0)
            f = files[i] = _open_input(audio_list[i], i, n_mels, forced_language, initial, durations)
            if not f.done:
                ready.append(f)

    def rows():
        while True:
            admit()
            if ready:
                f = ready.pop(0)
                size = sizes[f.index] = min(N_FRAMES, f.content_frames - f.seek)
                windows[0] += 1
                yield ((f.index, windows[0]), mel_window(f.mel, f.seek, size),
                       tuple(f.all_tokens[f.prompt_reset_since:]), f.language_token if multilingual else None)
            elif sizes:
                yield None  # windows in flight: their inputs' next windows come when they end
            else:
                return

    def on_result(key: Any, res: Any) -> None:
        f = files[key[0]]
        size = sizes.pop(f.index)
        step = _seek_step(f, res, size, special, multilingual)
        if step is not None:
            _keep_segments(f, step[0], res, tokenizer, special, False, options)
        if not f.done:
            ready.append(f)
        else:
            f.mel = None  # the input's features are freed as it ends

    engine.decode(decoder.params, rows(), request, on_result, prompt=(), prompts=True)
    return _results(audio_list, files, durations, tokenizer, special, multilingual, False)


def _results(audio_list: Sequence[Any], files: Dict[int, _File], durations: Dict[int, float], tokenizer: Any,
             special: Any, multilingual: bool, words_on: bool) -> List[Transcription]:
    results = []
    for i in range(len(audio_list)):
        f = files[i]
        text = tokenizer.decode(text_tokens(f.all_tokens[len(f.initial_prompt_tokens):], special.eot))
        code = "en"
        if multilingual and f.language_token is not None:
            code = tokenizer.id_to_code.get(int(f.language_token), "en")
        results.append(Transcription(text, tuple(_typed_segment(s, words_on) for s in f.segments), code,
                                     durations[i]))
    return results


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
    prompt_buckets: Optional[Sequence[int]] = PROMPT_BUCKETS,
    prepend_punctuations: str = al.PREPEND_PUNCTUATIONS,
    append_punctuations: str = al.APPEND_PUNCTUATIONS,
    seed: int = 0,
    trim_silence: bool = True,
) -> List[Transcription]:
    """openai-whisper's ``transcribe`` on a bare ``(model, params)``, with its argument names.

    Builds a :class:`Decoder` and runs :func:`run_sequential`; a single input
    that is not a list is accepted too (the result is still a list).
    ``prompt_buckets=None`` conditions on exact prompts like openai-whisper
    (one compilation per distinct prompt length).
    """
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(temperatures, (int, float)):
        temperatures = (float(temperatures),)
    if isinstance(audio_list, (str, bytes, dict)) or (isinstance(audio_list, np.ndarray) and audio_list.ndim == 1):
        audio_list = [audio_list]
    request = DecodeRequest(
        task=task, language=language,
        fallback=fb.FallbackConfig(tuple(temperatures), compression_ratio_threshold, logprob_threshold,
                                   no_speech_threshold),
        seed=seed, prompt_buckets=None if prompt_buckets is None else tuple(prompt_buckets),
    )
    options = SequentialOptions(condition_on_previous_text, initial_prompt, hallucination_silence_threshold,
                                word_timestamps, prepend_punctuations, append_punctuations, trim_silence)
    return run_sequential(Decoder(model, params, int(batch_size)), list(audio_list), request, options)
