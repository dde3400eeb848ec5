"""Text normalisers for word error rates, and the WER itself.

:class:`EnglishNormalizer` follows the conventions of openai-whisper's
``EnglishTextNormalizer`` (lower case; bracketed and parenthesised asides and
hesitations removed; contractions and titles spelled out; spelled-out numbers,
ordinals, percentages and currency amounts written in digits; a few British
spellings made American; punctuation and diacritics removed) so WERs are
comparable with the published ones. It is our own, smaller implementation:
``tests/test_normalize.py`` lists where it agrees with openai-whisper's and
where it differs on purpose. :class:`BasicNormalizer` is for other languages
(lower case, asides, symbols and punctuation removed, letters kept).
:func:`normalizer_for` picks one by language; :func:`word_error_rate` counts
word edits.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Dict, List, Optional, Sequence

_BRACKETS = re.compile(r"[<\[][^>\]]*[>\]]|\([^)]*\)")
_SPACES = re.compile(r"\s+")


def _symbols_to_space(text: str, keep: str = "") -> str:
    """Marks, symbols and punctuation (Unicode categories M, S, P) become spaces, except ``keep``."""
    return "".join(
        " " if unicodedata.category(c)[0] in "MSP" and c not in keep else c for c in text
    )


class BasicNormalizer:
    """Lower case, asides in brackets removed, symbols and punctuation to spaces; letters kept."""

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).lower()
        text = _BRACKETS.sub(" ", text)
        return _SPACES.sub(" ", _symbols_to_space(text)).strip()


# ------------------------------------------------------------------ English
_FILLERS = re.compile(r"\b(?:hmm|mm|mhm|mmm|uh|um)\b")

# Whole words first, then endings (applied in this order).
_CONTRACTIONS = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bshan't\b", "shall not"),
    (r"\blet's\b", "let us"), (r"\bain't\b", "aint"), (r"\by'all\b", "you all"),
    (r"\bwanna\b", "want to"), (r"\bgonna\b", "going to"), (r"\bgotta\b", "got to"),
    (r"\bi'ma\b", "i am going to"), (r"\bimma\b", "i am going to"),
    (r"\bwoulda\b", "would have"), (r"\bcoulda\b", "could have"), (r"\bshoulda\b", "should have"),
    (r"\bma'am\b", "madam"),
    (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'d gone\b", " had gone"),
    (r"'s gone\b", " has gone"), (r"'d done\b", " had done"), (r"'s got\b", " has got"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"),
    (r"'ll\b", " will"), (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am"),
]
_CONTRACTIONS_RE = [(re.compile(p), r) for p, r in _CONTRACTIONS]

_TITLES = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "st": "saint", "dr": "doctor", "prof": "professor",
    "capt": "captain", "gov": "governor", "gen": "general", "sen": "senator", "rep": "representative",
    "pres": "president", "rev": "reverend", "hon": "honorable", "asst": "assistant", "lt": "lieutenant",
    "col": "colonel", "jr": "junior", "sr": "senior", "esq": "esquire",
}
_TITLES_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\b\.?")

# A short list of common British spellings (openai-whisper ships a far longer one).
_AMERICAN = {
    "colour": "color", "colours": "colors", "favourite": "favorite", "favourites": "favorites",
    "honour": "honor", "labour": "labor", "neighbour": "neighbor", "neighbours": "neighbors",
    "behaviour": "behavior", "humour": "humor", "flavour": "flavor", "centre": "center",
    "centres": "centers", "theatre": "theater", "metre": "meter", "metres": "meters", "litre": "liter",
    "realise": "realize", "realised": "realized", "recognise": "recognize", "recognised": "recognized",
    "organise": "organize", "organised": "organized", "organisation": "organization",
    "apologise": "apologize", "analyse": "analyze", "defence": "defense", "licence": "license",
    "travelled": "traveled", "travelling": "traveling", "grey": "gray", "programme": "program",
    "catalogue": "catalog", "cheque": "check", "jewellery": "jewelry", "tyre": "tire", "tyres": "tires",
}

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12}
_ORDINALS = {
    "first": "one", "second": "two", "third": "three", "fourth": "four", "fifth": "five", "sixth": "six",
    "seventh": "seven", "eighth": "eight", "ninth": "nine", "tenth": "ten", "eleventh": "eleven",
    "twelfth": "twelve", "thirteenth": "thirteen", "fourteenth": "fourteen", "fifteenth": "fifteen",
    "sixteenth": "sixteen", "seventeenth": "seventeen", "eighteenth": "eighteen", "nineteenth": "nineteen",
    "twentieth": "twenty", "thirtieth": "thirty", "fortieth": "forty", "fiftieth": "fifty",
    "sixtieth": "sixty", "seventieth": "seventy", "eightieth": "eighty", "ninetieth": "ninety",
    "hundredth": "hundred", "thousandth": "thousand", "millionth": "million",
}
_CURRENCY = {"dollar": "$", "dollars": "$", "pound": "£", "pounds": "£", "euro": "€", "euros": "€"}


def _is_number_word(w: str) -> bool:
    return w in _UNITS or w in _TENS or w in _SCALES or w == "hundred" or w in _ORDINALS


def _ordinal_suffix(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


class _NumberParser:
    """Spelled-out numbers in a word list to digits (one left-to-right pass)."""

    def __init__(self, words: List[str]):
        self.words = words
        self.out: List[str] = []

    def run(self) -> List[str]:
        i = 0
        while i < len(self.words):
            w = self.words[i]
            if _is_number_word(w) and not (w == "second" and not self._after_number()):
                i = self._number(i)
            else:
                self.out.append(w)
                i += 1
        return self.out

    def _after_number(self) -> bool:
        return bool(self.out) and self.out[-1][:1].isdigit()

    def _number(self, i: int) -> int:
        """Parses one number from word ``i``; appends it; returns the next index."""
        words = self.words
        total, current, last = 0, 0, None
        ordinal = False
        while i < len(words) and not ordinal:
            w = words[i]
            if w in _ORDINALS and (w != "second" or last is not None):
                w, ordinal = _ORDINALS[w], True
            if w in _UNITS:
                v = _UNITS[w]
                if last == "tens" and v < 10 and current % 100 == 0 or last == "tens" and 0 < v < 10:
                    current += v
                elif last in (None, "hundred", "scale") and not (v == 0 and last is not None):
                    if last is None and v >= 10 or last in ("hundred", "scale"):
                        current += v
                        last = "teen" if v >= 10 else "unit"
                        i += 1
                        continue
                    current += v
                elif last == "teen" and v >= 10 and total == 0 and current < 100:
                    current = current * 100 + v  # nineteen eighteen -> 1918
                else:
                    break
                last = "teen" if v >= 10 else "unit"
            elif w in _TENS:
                v = _TENS[w]
                if last in (None, "hundred", "scale"):
                    current += v
                elif last in ("teen", "tens") and total == 0 and current < 100:
                    current = current * 100 + v  # nineteen ninety -> 1990, twenty twenty -> 2020
                else:
                    break
                last = "tens"
            elif w == "hundred":
                if last in ("unit", "teen", "tens"):
                    current *= 100
                elif last is None:
                    current = 100
                else:
                    break
                last = "hundred"
            elif w in _SCALES:
                if last is None:
                    current = 1
                elif last == "scale":
                    break
                total += current * _SCALES[w]
                current, last = 0, "scale"
            elif w == "and" and last in ("hundred", "scale") and i + 1 < len(words) and (
                    words[i + 1] in _UNITS or words[i + 1] in _TENS):
                pass
            else:
                break
            i += 1
        value = total + current
        text = str(value)
        if ordinal:
            text += _ordinal_suffix(value)
        elif i + 1 < len(words) and words[i] == "point" and words[i + 1] in _UNITS and _UNITS[words[i + 1]] < 10:
            digits = []
            i += 1
            while i < len(words) and words[i] in _UNITS and _UNITS[words[i]] < 10:
                digits.append(str(_UNITS[words[i]]))
                i += 1
            text += "." + "".join(digits)
        if not ordinal and i < len(words):
            if words[i] in ("percent", "per") and (words[i] == "percent" or words[i + 1:i + 2] == ["cent"]):
                i += 1 if words[i] == "percent" else 2
                text += "%"
            elif words[i] in _CURRENCY:
                symbol = _CURRENCY[words[i]]
                i += 1
                text = symbol + text
            elif words[i] in ("cent", "cents"):
                i += 1
                text = "¢" + text
        self.out.append(text)
        return i


def _digits_currency(text: str) -> str:
    """``5 dollars`` -> ``$5``; ``5 percent`` -> ``5%``; ``1,000`` -> ``1000``."""
    text = re.sub(r"(\d),(\d{3})\b", r"\1\2", text)
    text = re.sub(r"(\d),(\d{3})\b", r"\1\2", text)
    text = re.sub(r"\b(\d+(?:\.\d+)?) ?(?:percent|per cent)\b", r"\1%", text)
    text = re.sub(r"\b(\d+(?:\.\d+)?) (dollars?|pounds?|euros?)\b", lambda m: _CURRENCY[m.group(2)] + m.group(1), text)
    text = re.sub(r"\b(\d+) cents?\b", r"¢\1", text)
    return text


class EnglishNormalizer:
    """openai-whisper's English conventions, our implementation (see the module docstring)."""

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("\u2018", "'")
        text = _BRACKETS.sub(" ", text)
        text = _FILLERS.sub(" ", text)
        text = re.sub(r"\s+'", "'", text)
        for pattern, repl in _CONTRACTIONS_RE:
            text = pattern.sub(repl, text)
        text = _TITLES_RE.sub(lambda m: _TITLES[m.group(1)] + " ", text)
        text = re.sub(r"(\d),(\d)", r"\1\2", text)
        text = re.sub(r"\.(?!\d)", " ", text)  # full stops go, decimal points stay
        text = _strip_diacritics(text)
        text = _symbols_to_space(text, keep=".%$¢€£'")
        text = text.replace("'", " ")
        text = re.sub(r"([$¢€£])\s+(\d)", r"\1\2", text)
        text = re.sub(r"(\d)\s+%", r"\1%", text)
        words = [_AMERICAN.get(w, w) for w in text.split()]
        text = " ".join(_NumberParser(words).run())
        text = _digits_currency(text)
        return _SPACES.sub(" ", text).strip()


_LETTERS = {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"}


def _strip_diacritics(text: str) -> str:
    """Letters without their accents (``é`` -> ``e``, ``ß`` -> ``ss``); other characters kept."""
    out = []
    for c in unicodedata.normalize("NFKD", text):
        if c in _LETTERS:
            out.append(_LETTERS[c])
        elif unicodedata.category(c) != "Mn":
            out.append(c)
    return "".join(out)


def normalizer_for(language: Optional[str]) -> Callable[[str], str]:
    """:class:`EnglishNormalizer` for ``en`` (and unknown), :class:`BasicNormalizer` otherwise."""
    return _ENGLISH if language in (None, "", "en", "english") else _BASIC


_ENGLISH = EnglishNormalizer()
_BASIC = BasicNormalizer()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word lists (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(reference: str, hypothesis: str, language: Optional[str] = "en",
                    normalizer: Optional[Callable[[str], str]] = None) -> float:
    """Word edits / reference words after normalising both texts.

    An empty (normalised) reference gives 0 for an empty hypothesis and
    ``inf`` otherwise.
    """
    norm = normalizer or normalizer_for(language)
    ref, hyp = norm(reference).split(), norm(hypothesis).split()
    if not ref:
        return 0.0 if not hyp else float("inf")
    return edit_distance(ref, hyp) / len(ref)
