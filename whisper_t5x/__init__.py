"""whisper_t5x: Whisper speech recognition in JAX with T5X-style partitioning.

The top-level names are imported lazily so ``import whisper_t5x`` stays cheap
and never needs gin.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "WhisperConfig": "whisper_t5x.model.config",
    "FlaxWhisperForConditionalGeneration": "whisper_t5x.model.pretrained",
    "FlaxWhisperPipeline": "whisper_t5x.pipeline",
    "FlaxWhisperPipline": "whisper_t5x.pipeline",
    "WhisperTokenizer": "whisper_t5x.text.tokenizer",
    "load_audio": "whisper_t5x.audio.loading",
    "log_mel_spectrogram": "whisper_t5x.audio.features",
    "load_checkpoint": "whisper_t5x.checkpoints",
    "Transcription": "whisper_t5x.results",
    "Segment": "whisper_t5x.results",
    "Word": "whisper_t5x.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'whisper_t5x' has no attribute {name!r}")
