"""Architecture description of one Whisper checkpoint, and its builders.

``WhisperConfig`` is a frozen dataclass so it can be a static argument of jitted
functions and a field of Flax modules. It is built from a Hugging Face
``config.json`` dict, an openai-whisper ``dims`` dict, a named architecture, or
directly by a checkpoint loader (CTranslate2 derives sizes from tensor shapes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Tuple

# Sizes of the published architectures: (d_model, heads, encoder_layers,
# decoder_layers, num_mel_bins, vocab_size).
_ARCHITECTURES = {
    "tiny": (384, 6, 4, 4, 80, 51865),
    "base": (512, 8, 6, 6, 80, 51865),
    "small": (768, 12, 12, 12, 80, 51865),
    "medium": (1024, 16, 24, 24, 80, 51865),
    "large": (1280, 20, 32, 32, 80, 51865),
    "large-v1": (1280, 20, 32, 32, 80, 51865),
    "large-v2": (1280, 20, 32, 32, 80, 51865),
    "large-v3": (1280, 20, 32, 32, 128, 51866),
    "large-v3-turbo": (1280, 20, 32, 4, 128, 51866),
    "distil-large-v2": (1280, 20, 32, 2, 80, 51865),
    "distil-large-v3": (1280, 20, 32, 2, 128, 51866),
    "distil-medium.en": (1024, 16, 24, 2, 80, 51864),
    "distil-small.en": (768, 12, 12, 2, 80, 51864),
}
for _name in ("tiny", "base", "small", "medium"):
    _d, _h, _e, _dl, _m, _ = _ARCHITECTURES[_name]
    _ARCHITECTURES[_name + ".en"] = (_d, _h, _e, _dl, _m, 51864)

ENGLISH_ONLY_VOCAB_SIZE = 51864
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = (None, "xla", "cudnn")  # WhisperConfig.attention_impl values


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's special tokens, which follow from the vocabulary layout."""

    eot: int
    sot: int
    first_language: int
    num_languages: int
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int

    @property
    def language_ids(self) -> Tuple[int, ...]:
        return tuple(range(self.first_language, self.first_language + self.num_languages))

    @classmethod
    def for_vocab_size(cls, vocab_size: int) -> "SpecialTokens":
        if vocab_size == ENGLISH_ONLY_VOCAB_SIZE:
            eot, num_languages = 50256, 99
        elif vocab_size >= 51865:
            eot = 50257
            # large-v3 added one language (Cantonese); each extra vocab slot is one language.
            num_languages = 99 + (vocab_size - 51865)
        else:
            raise ValueError(
                f"vocab_size {vocab_size} is not a Whisper vocabulary "
                f"(expected {ENGLISH_ONLY_VOCAB_SIZE} for English-only or >= 51865 for multilingual)"
            )
        sot = eot + 1
        first_language = sot + 1
        translate = first_language + num_languages
        return cls(
            eot=eot,
            sot=sot,
            first_language=first_language,
            num_languages=num_languages,
            translate=translate,
            transcribe=translate + 1,
            sot_lm=translate + 2,
            sot_prev=translate + 3,
            no_speech=translate + 4,
            no_timestamps=translate + 5,
            timestamp_begin=translate + 6,
        )


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Sizes and token ids of one Whisper architecture.

    Field names follow Hugging Face's ``WhisperConfig`` so a ``config.json``
    maps onto it directly.
    """

    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    # Token ids the model needs; derived from the vocabulary when not given.
    decoder_start_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    suppress_tokens: Tuple[int, ...] = ()
    begin_suppress_tokens: Tuple[int, ...] = ()
    # (decoder layer, head) pairs whose cross-attention aligns tokens to audio.
    alignment_heads: Tuple[Tuple[int, int], ...] = ()
    # Stack layer parameters on a leading "layers" axis and run them with nn.scan.
    scan_layers: bool = False
    layer_norm_eps: float = 1e-5
    # Rematerialisation of each layer in the backward pass (training only; a forward pass is unchanged):
    # "none", "full" (keep only layer inputs), "dots" (also keep matmul outputs), "dots_no_batch"
    # (keep matmul outputs without batch dimensions, i.e. those of the weights alone).
    remat_policy: str = "none"
    # How the encoder's self-attention runs: None, the model's own attention (query chunks, one head
    # at a time on one device); "xla" or "cudnn", jax.nn.dot_product_attention with that
    # implementation ("cudnn": the fused flash-attention kernel of NVIDIA GPUs, bf16/fp16 only).
    # A runtime choice, not part of the checkpoint (never written to config.json).
    attention_impl: Optional[str] = None

    def __post_init__(self):
        special = SpecialTokens.for_vocab_size(self.vocab_size)
        # Frozen dataclass: fill derived defaults through object.__setattr__.
        if self.decoder_start_token_id is None:
            object.__setattr__(self, "decoder_start_token_id", special.sot)
        if self.eos_token_id is None:
            object.__setattr__(self, "eos_token_id", special.eot)
        if self.pad_token_id is None:
            object.__setattr__(self, "pad_token_id", special.eot)
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            object.__setattr__(self, name, tuple(int(t) for t in getattr(self, name) or ()))
        object.__setattr__(
            self, "alignment_heads", tuple((int(a), int(b)) for a, b in (self.alignment_heads or ()))
        )
        self.validate()

    def validate(self) -> None:
        problems = []
        for name in (
            "vocab_size", "num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
            "decoder_layers", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
            "max_source_positions", "max_target_positions",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name}={value!r} must be a positive integer")
        if not problems:
            for heads_name in ("encoder_attention_heads", "decoder_attention_heads"):
                if self.d_model % getattr(self, heads_name):
                    problems.append(
                        f"d_model={self.d_model} is not divisible by {heads_name}={getattr(self, heads_name)}"
                    )
        if self.attention_impl not in ATTENTION_IMPLS:
            problems.append(f"attention_impl={self.attention_impl!r} must be one of {ATTENTION_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            problems.append(f"remat_policy={self.remat_policy!r} must be one of {REMAT_POLICIES}")
        if problems:
            raise ValueError("Invalid WhisperConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived
    @property
    def special_tokens(self) -> SpecialTokens:
        return SpecialTokens.for_vocab_size(self.vocab_size)

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= 51865

    @property
    def max_length(self) -> int:
        """Longest decoder sequence (Hugging Face's ``config.max_length``)."""
        return self.max_target_positions

    @property
    def num_frames(self) -> int:
        """Input mel frames of one 30 s window (the encoder halves them)."""
        return 2 * self.max_source_positions

    def replace(self, **changes: Any) -> "WhisperConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "WhisperConfig":
        """From a Hugging Face ``config.json`` dict; unknown keys are ignored."""
        if values.get("model_type") not in (None, "whisper"):
            raise ValueError(f"config model_type is {values.get('model_type')!r}, not 'whisper'")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in fields}
        for key in ("suppress_tokens", "begin_suppress_tokens", "alignment_heads"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str) -> "WhisperConfig":
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read Whisper config {path}: {e}") from e
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad Whisper config {path}: {e}") from e

    @classmethod
    def from_openai_dims(cls, dims: Mapping[str, int], **overrides: Any) -> "WhisperConfig":
        """From the ``dims`` dict stored in an openai-whisper ``.pt`` checkpoint."""
        d = dims["n_audio_state"]
        if dims["n_text_state"] != d:
            raise ValueError(f"audio width {d} != text width {dims['n_text_state']}; not supported")
        return cls(
            vocab_size=dims["n_vocab"],
            num_mel_bins=dims["n_mels"],
            d_model=d,
            encoder_layers=dims["n_audio_layer"],
            encoder_attention_heads=dims["n_audio_head"],
            decoder_layers=dims["n_text_layer"],
            decoder_attention_heads=dims["n_text_head"],
            encoder_ffn_dim=4 * d,
            decoder_ffn_dim=4 * d,
            max_source_positions=dims["n_audio_ctx"],
            max_target_positions=dims["n_text_ctx"],
            **overrides,
        )

    @classmethod
    def for_architecture(cls, name: str, **overrides: Any) -> "WhisperConfig":
        """A published architecture by name (``tiny``, ``base.en``, ``large-v3`` ...)."""
        if name not in _ARCHITECTURES:
            raise ValueError(f"unknown Whisper architecture {name!r}; known: {sorted(_ARCHITECTURES)}")
        d, heads, enc, dec, mels, vocab = _ARCHITECTURES[name]
        return cls(
            vocab_size=vocab,
            num_mel_bins=mels,
            d_model=d,
            encoder_layers=enc,
            encoder_attention_heads=heads,
            decoder_layers=dec,
            decoder_attention_heads=heads,
            encoder_ffn_dim=4 * d,
            decoder_ffn_dim=4 * d,
            **overrides,
        )

    def to_hf_dict(self) -> dict:
        """A ``config.json`` dict that transformers' ``WhisperConfig`` reads."""
        special = self.special_tokens
        return {
            "model_type": "whisper",
            "architectures": ["WhisperForConditionalGeneration"],
            "vocab_size": self.vocab_size,
            "num_mel_bins": self.num_mel_bins,
            "d_model": self.d_model,
            "encoder_layers": self.encoder_layers,
            "encoder_attention_heads": self.encoder_attention_heads,
            "decoder_layers": self.decoder_layers,
            "decoder_attention_heads": self.decoder_attention_heads,
            "encoder_ffn_dim": self.encoder_ffn_dim,
            "decoder_ffn_dim": self.decoder_ffn_dim,
            "max_source_positions": self.max_source_positions,
            "max_target_positions": self.max_target_positions,
            "decoder_start_token_id": self.decoder_start_token_id,
            "bos_token_id": special.eot,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "suppress_tokens": list(self.suppress_tokens),
            "begin_suppress_tokens": list(self.begin_suppress_tokens),
            "activation_function": "gelu",
            "scale_embedding": False,
            "tie_word_embeddings": True,
        }

    def save_json(self, directory: str) -> str:
        path = os.path.join(directory, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_hf_dict(), f, indent=2)
        return path
