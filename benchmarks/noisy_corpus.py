"""Benchmark clips of speech with real pauses, noise, music-like tones and long silences.

Long-form segmenters (fixed windows, VAD rows, sequential seek) differ most where
the audio is not continuous speech. :func:`build` makes such a clip,
reproducibly from a seed, out of the espeak-ng sentences of
:mod:`_speech_corpus` (same voice, synthesis cache and normaliser):

* sentences in a seeded random order, each at a random level (-10 to 0 dB),
  followed by a pause of 0.2-1.5 s (most) or 1.5-4 s; after about one sentence
  in 24, a long silence of 10-60 s (when the clip has room for it);
* the clip is cut into *scenes* of 15-60 s, each with one background: clean,
  white or pink noise at 20, 10 or 5 dB SNR (relative to the speech's nominal
  level), music-like tones (notes of a pentatonic scale with harmonics) at
  10 dB SNR, or a near-silent noise floor (-70 dBFS). Backgrounds play under
  speech and pauses alike; long silences are digital silence or the floor;
* the clip is exactly ``seconds`` long: a sentence that would pass the end is
  not read, and the rest is background.

The reference text is the sentences read, in order. Each clip is cached under
``out_dir`` as a 16-bit 16 kHz mono WAV, its reference ``.txt`` and a ``.json``
layout (every sentence's and scene's start and end in seconds), keyed by
duration, seed and corpus version.

Usage: ``python benchmarks/noisy_corpus.py --seconds 60 600 --seed 0``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import wave
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _speech_corpus as corpus  # noqa: E402

SAMPLE_RATE = corpus.SAMPLE_RATE
NOISY_VERSION = "1"
SPEECH_RMS = 0.08  # nominal speech level that SNRs refer to (about -22 dBFS)
SCENES = ("clean", "white20", "white10", "white5", "pink20", "pink10", "pink5", "tones10", "near_silent")
FLOOR_RMS = 10 ** (-70 / 20)


def default_dir() -> str:
    return os.path.join(os.path.dirname(corpus.cache_dir()), "noisy_speech")


# ---------------------------------------------------------------------- backgrounds
def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise with a 1/f power spectrum, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _tones(rng: np.random.Generator, n: int) -> np.ndarray:
    """A melody of enveloped notes (fundamental and 2 harmonics) from an A pentatonic scale, unit RMS."""
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16, 19, 21, 24]) / 12)
    out = np.zeros(n)
    at = 0
    while at < n:
        length = min(n - at, int(rng.uniform(0.2, 0.8) * SAMPLE_RATE))
        t = np.arange(length) / SAMPLE_RATE
        f0 = rng.choice(scale)
        note = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
        attack = min(length, int(0.02 * SAMPLE_RATE))
        envelope = np.exp(-3.0 * t)
        envelope[:attack] *= np.linspace(0, 1, attack)
        out[at:at + length] = note * envelope
        at += length
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-12)


def _background(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "clean":
        return np.zeros(n)
    if kind == "near_silent":
        return rng.standard_normal(n) * FLOOR_RMS
    source, snr = kind.rstrip("0123456789"), float(kind.lstrip("abcdefghijklmnopqrstuvwxyz_"))
    unit = {"white": lambda: rng.standard_normal(n), "pink": lambda: _pink(rng, n),
            "tones": lambda: _tones(rng, n)}[source]()
    return unit * SPEECH_RMS / 10 ** (snr / 20)


# ---------------------------------------------------------------------- layout
def _speech_track(total: int, rng: np.random.Generator, directory: str):
    """(speech-only track, sentence layout, long-silence spans), sentences read until the clip is full."""
    track = np.zeros(total)
    sents = corpus.sentences()
    layout: List[Dict] = []
    silences: List[Tuple[int, int]] = []
    at = int(rng.uniform(0.2, 2.0) * SAMPLE_RATE)
    order = list(rng.permutation(len(sents)))
    while at < total:
        if not order:
            order = list(rng.permutation(len(sents)))
        text = sents[order.pop(0)]
        clip = corpus._synth_sentence(text, directory).astype(np.float64)
        if at + clip.size > total:
            break
        gain = 10 ** (rng.uniform(-10, 0) / 20)
        clip = clip * gain * SPEECH_RMS / (np.sqrt(np.mean(clip ** 2)) + 1e-12)
        track[at:at + clip.size] = clip
        layout.append({"start": at / SAMPLE_RATE, "end": (at + clip.size) / SAMPLE_RATE, "text": text})
        at += clip.size
        gap = rng.uniform(0.2, 1.5) if rng.random() < 0.7 else rng.uniform(1.5, 4.0)
        at += int(gap * SAMPLE_RATE)
        if rng.random() < 1 / 24 and total - at > 20 * SAMPLE_RATE:
            length = int(rng.uniform(10, min(60, (total - at) / SAMPLE_RATE - 5)) * SAMPLE_RATE)
            silences.append((at, at + length))
            at += length
    return track, layout, silences


def _scenes(total: int, rng: np.random.Generator) -> List[Tuple[int, int, str]]:
    scenes, at = [], 0
    while at < total:
        end = min(total, at + int(rng.uniform(15, 60) * SAMPLE_RATE))
        scenes.append((at, end, str(rng.choice(SCENES))))
        at = end
    return scenes


def _write_wav(path: str, audio: np.ndarray) -> None:
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    tmp = f"{path}.{os.getpid()}.tmp"
    with wave.open(tmp, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------------- public
def build(seconds: float, seed: int = 0, out_dir: Optional[str] = None) -> Tuple[str, str]:
    """(path of a 16 kHz WAV clip of exactly ``seconds``, reference text of what is spoken in it)."""
    out_dir = out_dir or default_dir()
    os.makedirs(out_dir, exist_ok=True)
    total = int(round(seconds * SAMPLE_RATE))
    key = hashlib.sha1(f"{NOISY_VERSION}|{corpus.CORPUS_VERSION}|{corpus.VOICE}|{corpus.SPEED}|{total}|{seed}"
                       .encode()).hexdigest()[:10]
    stem = os.path.join(out_dir, f"noisy_{int(seconds)}s_seed{seed}_{key}")
    wav, txt, layout_path = stem + ".wav", stem + ".txt", stem + ".json"
    if all(os.path.exists(p) for p in (wav, txt, layout_path)):
        with open(txt, encoding="utf-8") as f:
            return wav, f.read()
    rng = np.random.default_rng(seed)
    speech, sentences, silences = _speech_track(total, rng, corpus.cache_dir())
    scenes = _scenes(total, rng)
    background = np.zeros(total)
    for start, end, kind in scenes:
        background[start:end] = _background(kind, rng, end - start)
    for start, end in silences:  # long silences: digital silence or the noise floor
        background[start:end] = 0.0 if rng.random() < 0.5 else rng.standard_normal(end - start) * FLOOR_RMS
    audio = speech + background
    peak = np.abs(audio).max(initial=0.0)
    if peak > 0.99:
        audio *= 0.99 / peak
    _write_wav(wav, audio)
    reference = " ".join(s["text"] for s in sentences)
    layout = {"seconds": total / SAMPLE_RATE, "seed": seed, "sentences": sentences,
              "long_silences": [[s / SAMPLE_RATE, e / SAMPLE_RATE] for s, e in silences],
              "scenes": [[s / SAMPLE_RATE, e / SAMPLE_RATE, k] for s, e, k in scenes]}
    with open(layout_path, "w", encoding="utf-8") as f:
        json.dump(layout, f, indent=1)
    with open(txt, "w", encoding="utf-8") as f:
        f.write(reference)
    return wav, reference


def layout_of(audio_path: str) -> Dict:
    """The ``.json`` layout written next to a clip by :func:`build`."""
    with open(os.path.splitext(audio_path)[0] + ".json", encoding="utf-8") as f:
        return json.load(f)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60.0, 600.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", default=None)
    args = parser.parse_args(argv)
    for seconds in args.seconds:
        path, reference = build(seconds, args.seed, args.out_dir)
        layout = layout_of(path)
        spoken = sum(s["end"] - s["start"] for s in layout["sentences"])
        kinds = sorted({k for _, _, k in layout["scenes"]})
        print(f"{path}: {seconds:.0f} s, {len(layout['sentences'])} sentences ({spoken:.0f} s of speech), "
              f"{len(corpus.normalize(reference))} words, {len(layout['long_silences'])} long silences, "
              f"scenes: {', '.join(kinds)}")


if __name__ == "__main__":
    main()
