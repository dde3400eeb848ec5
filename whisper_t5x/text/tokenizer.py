"""Whisper's tokenizer: byte-level BPE text plus the special and timestamp tokens.

:class:`WhisperTokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` loaded
from a ``tokenizer.json`` and adds what Whisper decoding needs on top of it:
the special token ids, the language tokens, the forced decoder prefix
(:meth:`~WhisperTokenizer.sot_sequence`), and decoding of timestamp tokens.

Every id is read from the file by token text, never assumed. Timestamp tokens
(``<|0.00|>`` ... ``<|30.00|>``, 1501 of them, 0.02 s apart) follow
``<|notimestamps|>``; many ``tokenizer.json`` files leave them out, so their
ids are derived and they are rendered here rather than by ``tokenizers``. The
derived vocabulary size is cross-checked against
:meth:`whisper_t5x.model.config.SpecialTokens.for_vocab_size`, so the tokenizer and
the model config can never disagree silently.
"""

from __future__ import annotations

import numbers
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Union

from whisper_t5x.text import languages as _languages
from whisper_t5x.model.config import SpecialTokens

from whisper_t5x.audio.constants import TIME_PRECISION  # noqa: F401 (re-exported)
NUM_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>
TASKS = ("transcribe", "translate")

_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")

__all__ = ["WhisperTokenizer", "TASKS", "TIME_PRECISION"]


def _ids(ids: Union[Sequence[int], "object"]) -> List[int]:
    """Token ids from a list, tuple or numpy/jax array (1-D) as Python ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class WhisperTokenizer:
    """Text <-> ids for a Whisper vocabulary (English-only 51864, multilingual 51865, large-v3 51866)."""

    def __init__(self, tokenizer: "object"):
        """``tokenizer`` is a loaded ``tokenizers.Tokenizer``; prefer :meth:`from_file`."""
        self._tokenizer = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)

        def required(*texts: str) -> int:
            for text in texts:
                if text in vocab:
                    return int(vocab[text])
            raise ValueError(f"not a Whisper tokenizer: none of {texts} is in its vocabulary")

        self.eot = required("<|endoftext|>")
        self.sot = required("<|startoftranscript|>")
        self.translate = required("<|translate|>")
        self.transcribe = required("<|transcribe|>")
        self.sot_lm = required("<|startoflm|>")
        self.sot_prev = required("<|startofprev|>")
        # Renamed in large-v3 vocabularies; the id's role is the same.
        self.no_speech = required("<|nospeech|>", "<|nocaptions|>")
        self.no_timestamps = required("<|notimestamps|>")
        self.timestamp_begin = int(vocab.get("<|0.00|>", self.no_timestamps + 1))
        self.vocab_size = self.timestamp_begin + NUM_TIMESTAMPS

        # Language tokens sit between <|startoftranscript|> and <|translate|>.
        self.language_token_ids: List[int] = []
        self.language_codes: List[str] = []  # canonical codes ("he", never "iw")
        self._token_code: Dict[int, str] = {}
        for token_id in range(self.sot + 1, self.translate):
            text = tokenizer.id_to_token(token_id)
            match = _LANGUAGE_TOKEN.match(text or "")
            if not match:
                raise ValueError(f"not a Whisper tokenizer: id {token_id} ({text!r}) should be a language token")
            code = _languages.to_code(match.group(1))
            self.language_token_ids.append(token_id)
            self.language_codes.append(code)
        if self.language_codes != _languages.LANGUAGE_CODES[: len(self.language_codes)]:
            raise ValueError("not a Whisper tokenizer: its language tokens are not in Whisper's order")
        self.code_to_id: Dict[str, int] = dict(zip(self.language_codes, self.language_token_ids))
        self.id_to_code: Dict[int, str] = dict(zip(self.language_token_ids, self.language_codes))
        self.code_to_name: Dict[str, str] = {c: _languages.LANGUAGES[c] for c in self.language_codes}
        self.name_to_code: Dict[str, str] = {n: c for c, n in self.code_to_name.items()}

        self._check_against_config()
        self.special_ids = frozenset(
            int(vocab[t.content]) for t in tokenizer.get_added_tokens_decoder().values()
            if t.special and t.content in vocab
        ) | {self.eot, self.sot, self.translate, self.transcribe, self.sot_lm, self.sot_prev,
             self.no_speech, self.no_timestamps, *self.language_token_ids}

    def _check_against_config(self) -> None:
        """Raise if the ids read from the file differ from the ones the model config derives."""
        expected = SpecialTokens.for_vocab_size(self.vocab_size)
        found = SpecialTokens(
            eot=self.eot, sot=self.sot, first_language=self.sot + 1, num_languages=len(self.language_token_ids),
            translate=self.translate, transcribe=self.transcribe, sot_lm=self.sot_lm, sot_prev=self.sot_prev,
            no_speech=self.no_speech, no_timestamps=self.no_timestamps, timestamp_begin=self.timestamp_begin,
        )
        if found != expected:
            raise ValueError(
                f"tokenizer special tokens {found} disagree with the Whisper layout for vocab_size "
                f"{self.vocab_size}: {expected}"
            )

    # --------------------------------------------------------------- loading
    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "WhisperTokenizer":
        """Load a ``tokenizer.json``."""
        from tokenizers import Tokenizer

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - report which file failed to parse
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
        return cls(tokenizer)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike]) -> "WhisperTokenizer":
        """Load ``directory/tokenizer.json`` (a path to the file itself also works)."""
        directory = os.fspath(directory)
        path = directory if os.path.isfile(directory) else os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer.json in {directory}")
        return cls.from_file(path)

    # --------------------------------------------------------------- properties
    @property
    def is_multilingual(self) -> bool:
        """Whether the checkpoint was trained with language/task tokens (vocab >= 51865)."""
        return self.vocab_size >= 51865

    @property
    def special_tokens(self) -> SpecialTokens:
        """The same ids as a :class:`whisper_t5x.model.config.SpecialTokens`."""
        return SpecialTokens.for_vocab_size(self.vocab_size)

    @property
    def num_languages(self) -> int:
        return len(self.language_token_ids)

    @property
    def timestamp_end(self) -> int:
        """Id of ``<|30.00|>``, the last timestamp token."""
        return self.timestamp_begin + NUM_TIMESTAMPS - 1

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        kind = "multilingual" if self.is_multilingual else "English-only"
        return f"WhisperTokenizer({kind}, vocab_size={self.vocab_size}, languages={self.num_languages})"

    # --------------------------------------------------------------- languages / tasks
    def language_code(self, language: Union[str, int]) -> str:
        """Canonical code of a language given as code, name, ``<|xx|>`` token or token id."""
        if isinstance(language, numbers.Integral) and not isinstance(language, bool):
            language = int(language)
            if language not in self.id_to_code:
                raise ValueError(f"token id {language} is not a language token (valid: {self.language_token_ids[0]}"
                                 f"..{self.language_token_ids[-1]})")
            return self.id_to_code[language]
        return _languages.to_code(language, self.num_languages)

    def language_id(self, language: Union[str, int]) -> int:
        """Token id of ``language`` ("en", "english", "English", "<|en|>"); ValueError lists valid codes."""
        return self.code_to_id[self.language_code(language)]

    def language_name(self, language: Union[str, int]) -> str:
        return self.code_to_name[self.language_code(language)]

    def task_id(self, task: str) -> int:
        """Token id of "transcribe" or "translate" (also accepts "<|transcribe|>")."""
        key = task.strip().lower() if isinstance(task, str) else task
        if isinstance(key, str) and key.startswith("<|") and key.endswith("|>"):
            key = key[2:-2]
        if key == "transcribe":
            return self.transcribe
        if key == "translate":
            return self.translate
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")

    def sot_sequence(self, language: Union[None, str, int] = None, task: Optional[str] = None,
                     timestamps: bool = False) -> List[int]:
        """The forced decoder prefix, e.g. ``[sot, <|en|>, <|transcribe|>, <|notimestamps|>]``.

        Multilingual: with ``language`` given the prefix is ``[sot, lang, task]``
        with ``task`` defaulting to "transcribe"; with ``language=None`` (left
        to language detection) it is ``[sot]``, or ``[sot, task]`` when a task
        is named, as in openai-whisper. English-only checkpoints were trained
        without language/task tokens, so their prefix is ``[sot]`` (+
        ``<|notimestamps|>``); asking them for another language or for
        translation is a ValueError. ``<|notimestamps|>`` ends the prefix
        unless ``timestamps``.
        """
        seq = [self.sot]
        if self.is_multilingual:
            task_token = self.task_id(task or "transcribe")
            if language is not None:
                seq.append(self.language_id(language))
                seq.append(task_token)
            elif task is not None:
                seq.append(task_token)
        else:
            if language is not None and self.language_code(language) != "en":
                raise ValueError(f"this is an English-only tokenizer; language {language!r} is not supported")
            if task is not None and self.task_id(task) != self.transcribe:
                raise ValueError("this is an English-only tokenizer; it cannot translate")
        if not timestamps:
            seq.append(self.no_timestamps)
        return seq

    # --------------------------------------------------------------- text
    def encode(self, text: str) -> List[int]:
        """Text to BPE ids, without any special tokens added."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _decode_text(self, ids: List[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False) if ids else ""

    def _render(self, ids: Iterable[int], skip_special_tokens: bool, timestamps: bool, time_offset: float) -> str:
        """Decode runs of text ids together (so multi-token UTF-8 characters survive) and render the rest."""
        parts: List[str] = []
        run: List[int] = []
        for token in ids:
            if token >= self.timestamp_begin:
                if timestamps:
                    parts.append(self._decode_text(run))
                    run = []
                    parts.append(f"<|{(token - self.timestamp_begin) * TIME_PRECISION + time_offset:.2f}|>")
            elif token in self.special_ids or token >= self.eot:
                if not skip_special_tokens:
                    parts.append(self._decode_text(run))
                    run = []
                    parts.append(self._tokenizer.id_to_token(token) or "")
            else:
                run.append(token)
        parts.append(self._decode_text(run))
        return "".join(parts)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids to text. Timestamps are always dropped; special tokens unless ``skip_special_tokens=False``."""
        return self._render(_ids(ids), skip_special_tokens, timestamps=False, time_offset=0.0)

    def batch_decode(self, sequences: Iterable[Sequence[int]], skip_special_tokens: bool = True) -> List[str]:
        """:meth:`decode` for each row of a list or 2-D array."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(seq, skip_special_tokens) for seq in sequences]

    def decode_with_timestamps(self, ids: Sequence[int], skip_special_tokens: bool = True,
                               time_offset: float = 0.0) -> str:
        """Ids to text with timestamp tokens rendered inline as ``<|1.08|>`` (seconds, + ``time_offset``)."""
        return self._render(_ids(ids), skip_special_tokens, timestamps=True, time_offset=time_offset)

    # --------------------------------------------------------------- misc
    def token_to_id(self, token: str) -> Optional[int]:
        """Id of a token string; timestamp tokens like ``<|1.00|>`` are resolved even if absent from the file."""
        found = self._tokenizer.token_to_id(token)
        if found is None:
            match = re.fullmatch(r"<\|(\d+\.\d\d)\|>", token)
            if match:
                steps = round(float(match.group(1)) / TIME_PRECISION)
                if 0 <= steps < NUM_TIMESTAMPS:
                    return self.timestamp_begin + steps
        return found

    def id_to_token(self, token_id: int) -> Optional[str]:
        """Token string of an id (timestamps rendered as ``<|t.tt|>``)."""
        if self.timestamp_begin <= token_id < self.vocab_size:
            return f"<|{(token_id - self.timestamp_begin) * TIME_PRECISION:.2f}|>"
        return self._tokenizer.id_to_token(token_id)
