"""Decoder targets for training: one row's tokens in Whisper's layout, and which of them are learned.

A row is laid out as Whisper was trained::

    [<|startofprev|> previous text ...] <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>]
        target text (or <|t0|> text <|t1|> <|t1|> text <|t2|> ...) <|endoftext|>

``decoder_input_ids`` are these tokens but the last, ``labels`` the tokens
shifted left by one, and ``loss_mask`` is 1 exactly where the label is a
target token (text, timestamps, the final ``<|endoftext|>``): the prompt, the
forced prefix and the padding are never learned. A row gets segment
timestamps with probability ``timestamp_probability`` when it has segment
times (a fine-tuned model keeps its timestamps), and the previous text as a
prompt with probability ``prompt_probability`` (it keeps its long-form
conditioning); distil-whisper keeps both near 0.2. The choice is drawn from a
generator the caller seeds per row, so a resumed run rebuilds the same rows.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import CHUNK_LENGTH, TIME_PRECISION

__all__ = [
    "Example", "MissingLanguageError", "NonEnglishTargetError", "TargetBuilder", "TargetConfig", "TargetError",
    "TargetTooLongError", "TimedText", "TokenRow", "collate", "padded_length", "LENGTH_BUCKETS",
]

# Padded label lengths: each distinct one compiles one train-step program.
LENGTH_BUCKETS = (32, 64, 96, 128, 160, 192, 256, 320, 384, 448)


class TargetError(ValueError):
    """A row cannot be turned into training targets for this model."""


class NonEnglishTargetError(TargetError):
    """An English-only model was given targets in another language (or asked to translate)."""


class MissingLanguageError(TargetError):
    """A multilingual model needs the language of every target row."""


class TargetTooLongError(TargetError):
    """The target text does not fit the decoder's positions."""


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """How rows become targets.

    Attributes:
      task: ``transcribe`` or ``translate`` (the task token of multilingual models).
      language: the language of rows that carry none (``None``: rows must carry one,
        unless the model is English-only).
      timestamp_probability: chance that a row with segment times is trained with them.
      prompt_probability: chance that a row with a previous text is trained with it as a prompt.
      max_length: decoder positions (``decoder_input_ids`` length); the model's ``max_target_positions``.
      max_prompt_length: prompt tokens kept (the last ones), as decoding keeps them.
    """

    task: str = "transcribe"
    language: Optional[str] = None
    timestamp_probability: float = 0.2
    prompt_probability: float = 0.2
    max_length: int = 448
    max_prompt_length: int = 223

    def __post_init__(self):
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"TargetConfig.task must be 'transcribe' or 'translate', got {self.task!r}")
        for name in ("timestamp_probability", "prompt_probability"):
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"TargetConfig.{name} must be in [0, 1], got {p!r}")
        if int(self.max_length) < 8:
            raise ValueError(f"TargetConfig.max_length must be >= 8, got {self.max_length!r}")


@dataclasses.dataclass(frozen=True)
class TimedText:
    """One segment of a row: seconds from the start of the row's audio, and its text."""

    start: float
    end: float
    text: str


@dataclasses.dataclass(frozen=True)
class Example:
    """What one row says: its text, language, segment times and the text before it."""

    text: str
    language: Optional[str] = None
    segments: Tuple[TimedText, ...] = ()
    previous_text: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TokenRow:
    """A row's full token sequence and where its target starts (the first learned label's token)."""

    tokens: Tuple[int, ...]
    target_start: int

    @property
    def length(self) -> int:
        """Decoder positions used: ``len(tokens) - 1``."""
        return len(self.tokens) - 1

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(decoder_input_ids, labels, loss_mask)`` of this row, unpadded."""
        tokens = np.asarray(self.tokens, np.int32)
        mask = (np.arange(1, len(tokens)) >= self.target_start).astype(np.float32)
        return tokens[:-1], tokens[1:], mask


def padded_length(length: int, buckets: Sequence[int] = LENGTH_BUCKETS) -> int:
    """The smallest bucket holding ``length`` positions (``length`` itself past the last bucket)."""
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    return int(length)


def collate(rows: Sequence[TokenRow], length: int, pad_id: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(decoder_input_ids, labels, loss_mask)`` of shape ``[rows, length]``, right-padded with
    ``pad_id`` (masked out). Padding after the text changes no earlier position (causal attention)."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    labels = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.float32)
    for i, row in enumerate(rows):
        x, y, m = row.arrays()
        if x.shape[0] > length:
            raise TargetTooLongError(f"row {i} needs {x.shape[0]} positions, the batch has {length}")
        ids[i, :x.shape[0]], labels[i, :y.shape[0]], mask[i, :m.shape[0]] = x, y, m
    return ids, labels, mask


class TargetBuilder:
    """Token rows for one tokenizer (English-only or multilingual) and one :class:`TargetConfig`."""

    def __init__(self, tokenizer, config: TargetConfig = TargetConfig()):
        self.tokenizer = tokenizer
        self.config = config
        if not tokenizer.is_multilingual:
            if config.task != "transcribe":
                raise NonEnglishTargetError("this is an English-only model: it cannot be trained to translate "
                                            "(task must be 'transcribe')")
            self._check_english(config.language, "the configured language")

    # ------------------------------------------------------------------ checks
    def _check_english(self, language: Optional[str], what: str) -> None:
        if language is None or self.tokenizer.is_multilingual:
            return
        try:
            code = self.tokenizer.language_code(language)
        except (ValueError, KeyError) as e:
            raise NonEnglishTargetError(f"{what} {language!r} is not a language: {e}") from e
        if code != "en":
            raise NonEnglishTargetError(f"this is an English-only model; {what} is {language!r}, not English "
                                        "(train a multilingual model for it)")

    def _language(self, example: Example) -> Optional[str]:
        language = example.language or self.config.language
        self._check_english(language, "a target row's language")
        if self.tokenizer.is_multilingual and language is None:
            raise MissingLanguageError("a multilingual model needs the language of each target row: give "
                                       "--language (or a dataset with a language column)")
        return language

    # ------------------------------------------------------------------ pieces
    def prefix(self, language: Optional[str], timestamps: bool) -> List[int]:
        """The forced prefix (``<|startoftranscript|>`` ... ``[<|notimestamps|>]``)."""
        return self.tokenizer.sot_sequence(language if self.tokenizer.is_multilingual else None,
                                           self.config.task if self.tokenizer.is_multilingual else None,
                                           timestamps=timestamps)

    def text_tokens(self, text: str) -> List[int]:
        """The BPE tokens of ``text`` as the model emits them (one leading space)."""
        text = (text or "").strip()
        return self.tokenizer.encode(" " + text) if text else []

    def timed_tokens(self, segments: Sequence[TimedText]) -> Optional[List[int]]:
        """``<|start|> text <|end|>`` per segment, or ``None`` when the times do not fit one window."""
        out: List[int] = []
        last = 0.0
        for s in segments:
            start, end = float(s.start), float(s.end)
            if not (0.0 <= start <= end <= CHUNK_LENGTH) or start < last - TIME_PRECISION:
                return None
            last = end
            out.append(self.tokenizer.timestamp_begin + int(round(start / TIME_PRECISION)))
            out.extend(self.text_tokens(s.text))
            out.append(self.tokenizer.timestamp_begin + int(round(end / TIME_PRECISION)))
        return out or None

    def length_key(self, example: Example) -> int:
        """Positions of the row without prompt or timestamps (for grouping rows of similar length)."""
        return len(self.prefix(self._language(example), False)) + len(self.text_tokens(example.text)) + 1

    def check(self, example: Example) -> int:
        """Raises a :class:`TargetError` for a row that can never be trained on; returns its length key."""
        n = self.length_key(example)
        if n - 1 > self.config.max_length:
            raise TargetTooLongError(f"the target text needs {n - 1} decoder positions, more than the model's "
                                     f"{self.config.max_length}: {example.text[:80]!r}...")
        return n

    # ------------------------------------------------------------------ rows
    def build(self, example: Example, rng: Optional[np.random.Generator] = None) -> TokenRow:
        """The row's tokens; ``rng`` draws the timestamp and prompt choices (``None``: neither)."""
        language = self._language(example)
        # both draws are made for every row, so one row's choices never shift the next row's
        draw_timestamps, draw_prompt = rng.random(2) if rng is not None else (1.0, 1.0)
        body: Optional[List[int]] = None
        timestamps = False
        if example.segments and draw_timestamps < self.config.timestamp_probability:
            body = self.timed_tokens(example.segments)
            timestamps = body is not None
        if body is None:
            body = self.text_tokens(example.text)
        target = self.prefix(language, timestamps) + body + [self.tokenizer.eot]
        if timestamps and len(target) - 1 > self.config.max_length:  # timestamps do not fit: plain text
            timestamps = False
            target = self.prefix(language, False) + self.text_tokens(example.text) + [self.tokenizer.eot]
        if len(target) - 1 > self.config.max_length:
            raise TargetTooLongError(f"the target text needs {len(target) - 1} decoder positions, more than "
                                     f"the model's {self.config.max_length}: {example.text[:80]!r}...")
        forced = len(self.prefix(language, timestamps))
        prompt: List[int] = []
        if draw_prompt < self.config.prompt_probability and example.previous_text and example.previous_text.strip():
            room = self.config.max_length + 1 - len(target) - 1  # positions left after <|startofprev|>
            keep = min(room, int(self.config.max_prompt_length))
            previous = self.text_tokens(example.previous_text)[-keep:] if keep > 0 else []
            if previous:
                prompt = [self.tokenizer.sot_prev] + previous
        return TokenRow(tuple(prompt + target), len(prompt) + forced)
