"""Small things the training I/O and CLI tests share: a tiny random English-only model directory with the
tiny.en tokenizer, and local Parquet datasets of short WAV clips (sine tones or espeak-ng speech)."""

import io
import os
import wave

import numpy as np
import pytest

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]


def tokenizer_file(name="tiny.en"):
    from whisper_t5x.checkpoints.named import resolve_named_model

    try:
        directory, _ = resolve_named_model(name)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{name} not installed: {e}")
    return os.path.join(directory, "tokenizer.json")


def tiny_config(**overrides):
    from whisper_t5x.model.config import WhisperConfig

    values = dict(vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256)
    values.update(overrides)
    return WhisperConfig(**values)


def save_tiny_model(directory, seed=0, **overrides):
    """A random-init model written with save_pretrained (plus tokenizer.json); returns the directory."""
    from whisper_t5x.checkpoints.export import save_pretrained
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    config = tiny_config(**overrides)
    model = FlaxWhisperForConditionalGeneration(config, seed=seed)
    save_pretrained(str(directory), config, model.params, tokenizer_file=tokenizer_file())
    return str(directory)


def wav_bytes(audio, rate=16000):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def sine(i, seconds=1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.1 * np.sin(2 * np.pi * (200 + 30 * i) * t)).astype(np.float32)


def write_split(path, clips, texts, prefix, extra=None):
    """``clips`` (16 kHz arrays) and ``texts`` as a Parquet split with id / audio ({bytes, path}) / text."""
    import datasets

    rows = {"id": [f"{prefix}{i}" for i in range(len(clips))],
            "audio": [{"bytes": wav_bytes(a), "path": f"{prefix}{i}.wav"} for i, a in enumerate(clips)],
            "text": list(texts)}
    rows.update(extra or {})
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    ds.to_parquet(str(path))
    return str(path)


def sine_dataset(root, n_train=8, n_eval=4):
    """A folder with train.parquet and validation.parquet of sine clips saying word lists."""
    texts = [" ".join(WORDS[: 1 + i % len(WORDS)]) for i in range(max(n_train, n_eval))]
    write_split(os.path.join(root, "train.parquet"), [sine(i) for i in range(n_train)], texts[:n_train], "t")
    write_split(os.path.join(root, "validation.parquet"), [sine(i) for i in range(n_eval)], texts[:n_eval], "v")
    return str(root)
