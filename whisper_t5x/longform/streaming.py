"""Live transcription policies: which words to emit while a stream's audio still arrives.

A live stream is decoded again and again. At every *update* the scheduler
(:mod:`whisper_t5x.app.serving.streams`) asks the policy for the stream's
:class:`StreamRow` -- the *buffer* (the audio of the current item not yet
trimmed away, at most one 30 s window) and a *prompt* (the committed text that
is no longer in the buffer) -- decodes the rows of every stream due in one
batch, and hands each stream its :class:`Hypothesis` back. The policy decides
which words of that hypothesis are *committed*: emitted once, never changed.

* :class:`LocalAgreement` (LocalAgreement-2, Macháček et al. 2023): a word is
  committed when two consecutive hypotheses agree on it (the longest common
  prefix of their uncommitted parts).
* :class:`AlignAtt` (Papi et al. 2023, as in SimulStreaming): a word is
  committed while the alignment heads place it more than ``threshold_s``
  before the end of the audio decoded; the first word closer to the end (it
  may still be growing) and everything after it waits. Here the attention is
  read after decoding, from the teacher-forced alignment of the hypothesis
  (:func:`whisper_t5x.longform.alignment.find_alignment`, the word ends its DTW
  path gives): with greedy decoding the tokens are the same as when decoding,
  so the first word past the threshold is where AlignAtt's decoder would stop.

Both trim the buffer, so the encoder never sees more than a few seconds twice:
at the end of the last finished segment (a closed timestamp run of the
hypothesis) or sentence (a committed word ending in ``.?!``) all of whose
words are committed; the text trimmed away becomes the prompt. Word times
for the sentence cut come from the alignment, asked for (LocalAgreement) only
when a committed word in a long enough buffer ends a sentence. The
committed words still inside the buffer are recognised at the head of each
new hypothesis (:func:`skip_committed`) and not emitted again. At the
end of an item (:meth:`Policy.update` with ``final=True``) every remaining
word is committed.

A cut is placed in the longest pause near its boundary (:meth:`Policy._place_cut`,
:func:`quiet_point`): segment-end timestamps and aligned word ends are often late,
and a buffer that starts inside a word is misread.

Policies never touch a model: :func:`step` takes a ``decode`` function (rows
in, hypotheses out), so they are tested with fakes; :func:`~whisper_t5x.longform.stream_decode.decoder_decode_fn`
makes one from the long-form :class:`~whisper_t5x.longform.decoder.Decoder`.
Two of its options make short rows cheaper: ``audio_ctx`` (encode only the
encoder positions the longest row needs, in :data:`AUDIO_CTX_BUCKETS`) and
``inline_alignment`` (word times from the alignment heads' attention read
while decoding, :attr:`~whisper_t5x.decoding.generate.DecodeOptions.alignment_heads`,
instead of the second pass of :func:`~whisper_t5x.longform.alignment.find_alignment`).
With it, AlignAtt's words past the threshold are decoded and then withheld;
the loop does not stop the row there.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE

__all__ = [
    "StreamWord", "Hypothesis", "StreamRow", "StreamState", "Policy", "LocalAgreement", "AlignAtt", "POLICIES",
    "make_policy", "skip_committed", "common_prefix", "step", "PROMPT_LENGTHS", "SENTENCE_END", "quiet_point",
]

SENTENCE_END = ".?!\u3002\uff01\uff1f"
PROMPT_LENGTHS = (32, 16)  # prompts are cut to one of these (or kept whole when shorter), so streams share batches
_WORD = re.compile(r"[\w']+", re.UNICODE)


@dataclasses.dataclass(frozen=True)
class StreamWord:
    """One word of a hypothesis; times in seconds from the start of the row (or, once committed, of the item)."""

    text: str  # as decoded, with its leading space
    start: Optional[float] = None  # None: unknown (no word alignment)
    end: Optional[float] = None
    tokens: Tuple[int, ...] = ()

    def shifted(self, seconds: float) -> "StreamWord":
        return dataclasses.replace(self, start=None if self.start is None else self.start + seconds,
                                   end=None if self.end is None else self.end + seconds)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """A decoded row: its words and where its finished segments end.

    ``segment_ends``: ``(words, seconds)`` of each closed segment: the number of
    words before the boundary and its time from the row's start.
    """

    words: Tuple[StreamWord, ...] = ()
    segment_ends: Tuple[Tuple[int, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class StreamRow:
    """What one stream asks the decoder for at one update."""

    audio: np.ndarray  # float32 16 kHz, at most one window
    prompt: Tuple[int, ...] = ()  # committed tokens before the buffer
    language: Optional[str] = None  # a language code; None: detected
    word_times: bool = False  # the policy needs each word's start and end


DecodeFn = Callable[[Sequence[StreamRow]], Sequence[Hypothesis]]


def normalize_word(text: str) -> str:
    """The comparison form of a word: lower case, punctuation and spaces dropped (a punctuation mark: itself)."""
    return "".join(_WORD.findall(text.lower())) or text.strip()


@dataclasses.dataclass(eq=False)  # identity equality (holds an array)
class StreamState:
    """One stream's host state (per item: the buffer and its committed words; per stream: the prompt)."""

    initial_prompt: Tuple[int, ...] = ()
    language: Optional[str] = None
    buffer: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    buffer_start: float = 0.0  # seconds of the item at buffer[0]
    committed: List[StreamWord] = dataclasses.field(default_factory=list)  # this item's, times from its start
    in_buffer: int = 0  # how many of the last committed words lie in the buffer
    pending: Tuple[StreamWord, ...] = ()  # LocalAgreement: the last hypothesis' uncommitted words
    history: List[int] = dataclasses.field(default_factory=list)  # committed tokens out of the buffer (all items)
    decoded_samples: int = 0  # buffer samples the last row held
    updates: int = 0

    def append(self, audio: np.ndarray) -> None:
        audio = np.asarray(audio, np.float32).reshape(-1)
        if audio.size:
            self.buffer = np.concatenate([self.buffer, audio])

    @property
    def buffer_seconds(self) -> float:
        return self.buffer.size / SAMPLE_RATE

    @property
    def item_seconds(self) -> float:
        """Seconds of the item received (trimmed audio included)."""
        return self.buffer_start + self.buffer_seconds

    @property
    def new_samples(self) -> int:
        """Buffer samples no row has held yet."""
        return max(0, self.buffer.size - self.decoded_samples)

    @property
    def text(self) -> str:
        """The item's committed text."""
        return "".join(w.text for w in self.committed).strip()

    def new_item(self) -> None:
        """Start a fresh buffer (the committed text of the item stays in the prompt history)."""
        self.history.extend(t for w in self.committed[len(self.committed) - self.in_buffer:] for t in w.tokens)
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0.0
        self.committed = []
        self.in_buffer = 0
        self.pending = ()
        self.decoded_samples = 0

    def trim(self, seconds: float, words_before: int) -> None:
        """Drop the first ``seconds`` of the buffer; ``words_before``: committed buffer words that lie before it."""
        cut = int(round(min(max(seconds, 0.0), self.buffer_seconds) * SAMPLE_RATE))
        if cut <= 0:
            return
        words_before = max(0, min(words_before, self.in_buffer))
        first = len(self.committed) - self.in_buffer
        self.history.extend(t for w in self.committed[first:first + words_before] for t in w.tokens)
        self.in_buffer -= words_before
        self.buffer = self.buffer[cut:]
        self.buffer_start += cut / SAMPLE_RATE
        self.decoded_samples = max(0, self.decoded_samples - cut)


def common_prefix(a: Sequence[StreamWord], b: Sequence[StreamWord]) -> int:
    """Length of the longest common prefix of two word sequences (compared normalised)."""
    n = 0
    for x, y in zip(a, b):
        if normalize_word(x.text) != normalize_word(y.text):
            break
        n += 1
    return n


def skip_committed(committed: Sequence[StreamWord], words: Sequence[StreamWord],
                   committed_end: Optional[float] = None) -> int:
    """How many leading ``words`` of a new hypothesis re-transcribe the ``committed`` words in the buffer.

    The hypothesis usually starts with exactly the committed words; when it
    does not, the last one to three committed words are looked for near where
    they should end, then (with word times) words ending before
    ``committed_end`` (seconds from the row start) are skipped, and at last
    as many words as were committed.
    """
    if not committed:
        return 0
    c = [normalize_word(w.text) for w in committed]
    h = [normalize_word(w.text) for w in words]
    if h[:len(c)] == c:
        return len(c)
    for n in range(min(3, len(c)), 0, -1):
        tail = c[-n:]
        best = None
        for i in range(max(0, len(c) - n - 3), min(len(h) - n, len(c) - n + 3) + 1):
            if h[i:i + n] == tail and (best is None or abs(i - (len(c) - n)) < abs(best - (len(c) - n))):
                best = i
        if best is not None:
            return best + n
    if committed_end is not None and all(w.end is not None for w in words):
        k = 0
        while k < len(words) and words[k].end <= committed_end + 0.1:
            k += 1
        return k
    return min(len(c), len(h))


class Policy:
    """Base of the streaming policies: rows, committing, trimming.

    Args:
      min_audio_s: no decode before the buffer holds this much (a first row of
        a fraction of a second only invites hallucinations).
      max_buffer_s: a buffer longer than this is cut even without a finished
        segment (everything decoded is committed), so it stays within one window.
      min_trim_s: the buffer is trimmed at a finished segment only once it is this long.
      min_keep_s: a cut leaves at least this much decoded audio after it (a buffer that starts with a
        fraction of a second of new speech decodes badly; what follows a cut has been heard in context).
      prompt_tokens: the longest prompt (committed tokens before the buffer).
      cut_search_s: a cut moves to the longest pause within this many seconds of its boundary
        (:meth:`_place_cut`); 0: cut at the boundary.
    """

    name = "policy"
    word_times = False

    def __init__(self, min_audio_s: float = 1.0, max_buffer_s: float = 20.0, min_trim_s: float = 4.0,
                 min_keep_s: float = 1.5, prompt_tokens: int = PROMPT_LENGTHS[0], cut_search_s: float = 0.4):
        if not 0 < max_buffer_s <= N_SAMPLES / SAMPLE_RATE:
            raise ValueError(f"max_buffer_s must be in (0, {N_SAMPLES // SAMPLE_RATE}], got {max_buffer_s}")
        self.min_audio_s = float(min_audio_s)
        self.max_buffer_s = float(max_buffer_s)
        self.min_trim_s = float(min_trim_s)
        self.min_keep_s = float(min_keep_s)
        self.prompt_tokens = int(prompt_tokens)
        self.cut_search_s = float(cut_search_s)

    # ------------------------------------------------------------------ rows
    def ready(self, state: StreamState, min_new_s: float = 0.0) -> bool:
        """Whether an update would see enough new audio (and enough audio at all)."""
        return (state.buffer_seconds >= self.min_audio_s
                and state.new_samples >= max(1, int(min_new_s * SAMPLE_RATE)))

    def prompt(self, state: StreamState) -> Tuple[int, ...]:
        """The committed tokens before the buffer: the last 32 or 16 (a few lengths, so rows batch together)."""
        tokens = tuple(state.initial_prompt) + tuple(state.history)
        for n in PROMPT_LENGTHS:
            if n <= self.prompt_tokens and len(tokens) >= n:
                return tokens[-n:]
        # Shorter: the session's prompt alone (a few committed words would give every stream its own length).
        return tuple(state.initial_prompt)[-self.prompt_tokens:]

    def row(self, state: StreamState) -> StreamRow:
        audio = state.buffer[:N_SAMPLES]
        state.decoded_samples = audio.size
        return StreamRow(audio, self.prompt(state), state.language, self.word_times or self.could_trim(state))

    def could_trim(self, state: StreamState) -> bool:
        """Whether the buffer is long enough to trim and a committed word in it ends a sentence: then the
        row asks for word times (the cut is placed at that word's end), otherwise not (they cost a forward)."""
        if state.buffer_seconds < self.min_trim_s or not state.in_buffer:
            return False
        in_buffer = state.committed[len(state.committed) - state.in_buffer:]
        return any(w.text.rstrip()[-1:] in SENTENCE_END for w in in_buffer)

    # ------------------------------------------------------------------ committing
    def choose(self, state: StreamState, new: Sequence[StreamWord], row_seconds: float) -> int:
        """How many of the hypothesis' ``new`` (uncommitted) words to commit now."""
        raise NotImplementedError

    def update(self, state: StreamState, hyp: Hypothesis, final: bool = False) -> List[StreamWord]:
        """Commits words of ``hyp`` (the row :meth:`row` gave last); returns them (times from the item start)."""
        state.updates += 1
        row_seconds = state.decoded_samples / SAMPLE_RATE
        in_buffer = state.committed[len(state.committed) - state.in_buffer:]
        last_end = in_buffer[-1].end if in_buffer and in_buffer[-1].end is not None else None
        skip = skip_committed(in_buffer, hyp.words, None if last_end is None else last_end - state.buffer_start)
        new = hyp.words[skip:]
        n = len(new) if final else self.choose(state, new, row_seconds)
        emitted = [w.shifted(state.buffer_start) for w in new[:n]]
        state.committed.extend(emitted)
        state.in_buffer += len(emitted)
        state.pending = tuple(new[n:])
        if not final:
            emitted += self._trim(state, hyp, skip + n, row_seconds)
        return emitted

    def _trim(self, state: StreamState, hyp: Hypothesis, done: int, row_seconds: float) -> List[StreamWord]:
        """Trim at the last finished segment or sentence whose words (the first ``done`` of ``hyp``) are committed.

        Returns the words committed by force (a buffer past ``max_buffer_s`` with nothing to trim at)."""
        if state.buffer_seconds >= self.min_trim_s:
            cut = None  # (seconds from the buffer start, hypothesis words before it)
            last = row_seconds - self.min_keep_s
            for count, t in hyp.segment_ends:
                if 0 < count <= done and 0 < t <= last:
                    cut = (t, count)
            for k in range(done):
                w = hyp.words[k]
                if w.end is not None and w.text.rstrip()[-1:] in SENTENCE_END and 0 < w.end <= last:
                    if cut is None or w.end > cut[0]:
                        cut = (w.end, k + 1)
            if cut is not None:
                seconds = self._place_cut(state, hyp, *cut)
                # hypothesis words before the cut that are committed buffer words
                state.trim(seconds, state.in_buffer - (done - cut[1]))
                return []
        if state.buffer_seconds > self.max_buffer_s:
            # No finished segment in a long buffer: commit what was decoded and start after it.
            rest = [w.shifted(state.buffer_start) for w in state.pending]
            state.committed.extend(rest)
            state.in_buffer += len(rest)
            state.pending = ()
            state.trim(row_seconds, state.in_buffer)
            return rest
        return []


    def _place_cut(self, state: StreamState, hyp: Hypothesis, seconds: float, count: int) -> float:
        """Where the buffer is cut for a boundary at ``seconds`` after the first ``count`` hypothesis words.

        A segment's end timestamp and a word's aligned end (its DTW end is the next word's start) are
        often late by a fraction of a second: a cut there chops the next word's onset, and the new buffer
        starts with half a word the model then misreads ("He climbed" -> "The climb"). So the cut moves
        to the middle of the longest pause near the boundary, searched from ``cut_search_s`` before to
        ``cut_search_s`` after it, and never past the words on either side when their times are known
        (the last word before the boundary keeps its first 50 ms, the word after it its last 50 ms).
        Without a pause there (no stretch 20 dB quieter than the loudest) the boundary stays as given.
        """
        if self.cut_search_s <= 0:
            return seconds
        lo, hi = seconds - self.cut_search_s, seconds + self.cut_search_s
        before = hyp.words[count - 1] if 0 < count <= len(hyp.words) else None
        after = hyp.words[count] if count < len(hyp.words) else None
        if before is not None and before.start is not None:
            lo = max(lo, before.start + 0.05)
        if after is not None and after.end is not None:
            hi = min(hi, after.end - 0.05)
        hi = min(hi, max(seconds, state.decoded_samples / SAMPLE_RATE - self.min_keep_s))
        return quiet_point(state.buffer, lo, min(hi, state.buffer_seconds), seconds)


def quiet_point(audio: np.ndarray, lo: float, hi: float, default: float) -> float:
    """The middle (seconds) of the longest pause in ``audio[lo:hi]`` (seconds), ``default`` without one.

    A pause: 10 ms frames whose energy, averaged over 50 ms, is 20 dB or more below the loudest frame
    of the span (so a constant or slowly changing signal has none); ties go to the one nearest ``default``.
    """
    frame = SAMPLE_RATE // 100
    a, b = max(0, int(lo * SAMPLE_RATE)), min(audio.size, int(hi * SAMPLE_RATE))
    n = (b - a) // frame if b > a else 0
    if n < 3:
        return default
    energy = np.square(audio[a:a + n * frame].astype(np.float64)).reshape(n, frame).mean(axis=1)
    smooth = np.convolve(energy, np.ones(5) / 5, mode="same")
    quiet = smooth <= 0.01 * energy.max()
    if not quiet.any() or energy.max() <= 0:
        return default
    best, best_key = default, None
    k = 0
    while k < n:
        if not quiet[k]:
            k += 1
            continue
        j = k
        while j < n and quiet[j]:
            j += 1
        middle = (a + (k + j) * frame / 2) / SAMPLE_RATE
        key = (j - k, -abs(middle - default))
        if best_key is None or key > best_key:
            best, best_key = middle, key
        k = j
    return best


class LocalAgreement(Policy):
    """LocalAgreement-2: commit the longest prefix on which this hypothesis and the previous one agree.

    ``hold_last``: words of agreement withheld while they are the last words of the new hypothesis (a
    word at the end of the audio is heard without what follows it: two short rows agreeing on "brave"
    for "grey" is a common mistake of larger models); 0 is plain LocalAgreement-2.
    """

    name = "local_agreement"

    def __init__(self, hold_last: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        if hold_last < 0:
            raise ValueError(f"hold_last must be >= 0, got {hold_last}")
        self.hold_last = int(hold_last)

    def choose(self, state: StreamState, new: Sequence[StreamWord], row_seconds: float) -> int:
        n = common_prefix(state.pending, new)
        return max(0, min(n, len(new) - self.hold_last)) if self.hold_last else n


class AlignAtt(Policy):
    """AlignAtt: commit words whose aligned end lies more than ``threshold_s`` before the end of the audio."""

    name = "alignatt"
    word_times = True

    def __init__(self, threshold_s: float = 0.5, **kwargs: Any):
        super().__init__(**kwargs)
        if threshold_s < 0:
            raise ValueError(f"threshold_s must be >= 0, got {threshold_s}")
        self.threshold_s = float(threshold_s)

    def choose(self, state: StreamState, new: Sequence[StreamWord], row_seconds: float) -> int:
        limit = row_seconds - self.threshold_s
        n = 0
        for w in new:
            if w.end is None or w.end > limit:
                break
            n += 1
        return n


POLICIES = {"local_agreement": LocalAgreement, "alignatt": AlignAtt}


def make_policy(name: str, **kwargs: Any) -> Policy:
    """A policy by name (``local_agreement`` or ``alignatt``); ``ValueError`` names the choices."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown streaming policy {name!r}; choose one of {sorted(POLICIES)}") from None
    if cls is not AlignAtt:
        kwargs.pop("threshold_s", None)
    if cls is not LocalAgreement:
        kwargs.pop("hold_last", None)
    return cls(**kwargs)


def step(policy: Policy, states: Sequence[StreamState], decode: DecodeFn, final: bool = False
         ) -> List[List[StreamWord]]:
    """One update of several streams: their rows decoded in one ``decode`` call; the words each commits."""
    if not states:
        return []
    rows = [policy.row(s) for s in states]
    hyps = list(decode(rows))
    if len(hyps) != len(rows):
        raise RuntimeError(f"decode returned {len(hyps)} hypotheses for {len(rows)} rows")
    return [policy.update(s, h, final) for s, h in zip(states, hyps)]
