"""The generation settings a Whisper checkpoint implies, in Hugging Face's key names.

Loaders fill in what a format does not store (CTranslate2 and openai-whisper
keep none of it); :func:`~whisper_t5x.checkpoints.export.save_pretrained`
writes it as ``generation_config.json``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from whisper_t5x.model.config import WhisperConfig

__all__ = ["default_generation_config"]

# openai-whisper's default: no timestamp after 1 s into the window (50 x 0.02 s).
_MAX_INITIAL_TIMESTAMP_INDEX = 50
# Tokens never sampled first: the space token and end-of-text.
_SPACE = 220


def default_generation_config(config: WhisperConfig, lang_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """The generation settings a Whisper checkpoint implies (Hugging Face key names).

    ``lang_ids`` restricts ``lang_to_id`` of a multilingual model to those
    language tokens (CTranslate2's ``config.json`` lists them).
    """
    from whisper_t5x.text.languages import LANGUAGES

    special = config.special_tokens
    out: Dict[str, Any] = {
        "decoder_start_token_id": special.sot,
        "bos_token_id": special.eot,
        "eos_token_id": special.eot,
        "pad_token_id": special.eot,
        "max_length": config.max_target_positions,
        "no_timestamps_token_id": special.no_timestamps,
        "max_initial_timestamp_index": _MAX_INITIAL_TIMESTAMP_INDEX,
        "is_multilingual": config.is_multilingual,
        "suppress_tokens": list(config.suppress_tokens),
        "begin_suppress_tokens": list(config.begin_suppress_tokens) or [_SPACE, special.eot],
        "alignment_heads": [list(h) for h in config.alignment_heads],
    }
    if config.is_multilingual:
        codes = list(LANGUAGES)
        ids = sorted(lang_ids) if lang_ids else list(special.language_ids)
        out["lang_to_id"] = {
            f"<|{codes[i - special.first_language]}|>": int(i)
            for i in ids
            if 0 <= i - special.first_language < min(len(codes), special.num_languages)
        }
        out["task_to_id"] = {"translate": special.translate, "transcribe": special.transcribe}
    return out
