"""Whisper's language inventory: codes, English names and the token order.

Whisper reserves one special token per language right after
``<|startoftranscript|>``; the token order below is the order of those ids.
The first 99 are shared by every checkpoint, large-v3 added Cantonese
("yue") as the 100th. English-only checkpoints still carry the 99 tokens in
their vocabulary (with Hebrew spelled ``<|iw|>``) but were never trained on
them.

Users name a language by code ("en"), English name ("english", any case),
token ("<|en|>") or a common alias ("castilian", "mandarin", "iw").
"""

from __future__ import annotations

from typing import Dict, List

# Code -> English name, in token-id order.
LANGUAGES: Dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

LANGUAGE_CODES: List[str] = list(LANGUAGES)

# Other spellings -> code. "iw" is the legacy ISO code for Hebrew that the
# English-only vocabularies use in their token text.
ALIASES: Dict[str, str] = {
    "iw": "he",
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht",
    "letzeburgesch": "lb", "pushto": "ps", "panjabi": "pa", "moldavian": "ro",
    "moldovan": "ro", "sinhalese": "si", "castilian": "es", "mandarin": "zh",
}

_NAME_TO_CODE: Dict[str, str] = {name: code for code, name in LANGUAGES.items()}


def _unknown(language: object, valid: List[str]) -> ValueError:
    return ValueError(
        f"unknown language {language!r}; expected a code, English name or <|code|> token, "
        f"one of: {', '.join(valid)}"
    )


def to_code(language: str, num_languages: int = len(LANGUAGES)) -> str:
    """Canonical code of ``language`` ("en", "English", "<|en|>", "iw" -> "he").

    Raises ``ValueError`` listing the valid codes when the language is unknown or
    lies beyond the first ``num_languages`` of the token order.
    """
    valid = LANGUAGE_CODES[:num_languages]
    if not isinstance(language, str):
        raise _unknown(language, valid)
    key = language.strip()
    if key.startswith("<|") and key.endswith("|>"):
        key = key[2:-2]
    key = key.lower()
    code = key if key in LANGUAGES else _NAME_TO_CODE.get(key) or ALIASES.get(key)
    if code is None or code not in valid:
        raise _unknown(language, valid)
    return code


def language_index(language: str, num_languages: int = len(LANGUAGES)) -> int:
    """Position of ``language`` in the token order (add it to the first language id)."""
    return LANGUAGE_CODES.index(to_code(language, num_languages))
