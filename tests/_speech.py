"""Synthetic speech (espeak-ng) and a small WER for the pipeline tests."""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata

import numpy as np
import pytest

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng not installed")
_CACHE = os.path.join(tempfile.gettempdir(), "whisper_t5x_test_speech")

# About 2.5 minutes at 150 words per minute.
LONG_TEXT = (
    'The small town sat at the edge of a wide green valley. Every morning the old man opened his shop before the '
    'sun came up, and the smell of coffee drifted down the quiet street. Children walked to school in little '
    'groups, talking about their friends, their games and the long summer holidays that were still many weeks away.'
    ' Near the river there was an old stone bridge. People said it had been built by farmers who wanted to carry '
    'their goods to the market on the other side. The water under the bridge was clear and cold, and in the evening'
    ' you could see fish moving slowly between the rocks. One day a young woman arrived in the town with a heavy '
    'suitcase and a small notebook. She was looking for a house where her grandmother had lived a long time ago. '
    'Nobody knew the name she asked about, so she went to the library and spoke with the librarian, a patient man '
    'who liked to help visitors. Together they searched through old books, letters and photographs. After several '
    'hours they found a picture of a white house with a blue door and a garden full of flowers. Behind the house '
    'stood a tall tree that still grows near the church today. The woman walked to the church and found the tree. '
    'The white house was gone, but the garden was still green, wild and beautiful. She sat on a bench and read the '
    'letters that her grandmother had written to a friend. They were full of stories about the town, the river and '
    'the people who had lived there. Before she left, she gave a copy of the letters to the library, so that '
    'everyone in the town could read them. The librarian put them in a special place near the window, where the '
    'light was warm and soft. Many years later, children still come to read those letters, and they learn how the '
    'town began, how the bridge was built, and why the tree near the church is so important to the people who live '
    'there. In the autumn that tree turns red and gold, and the entire valley seems to glow in the late afternoon '
    'light. Farmers bring apples and vegetables to the market, and families walk along the river to watch the birds'
    ' before their long journey to the south.'
)

SPANISH_TEXT = (
    "Buenos días a todos. Hoy vamos a hablar de la historia de nuestra ciudad y de las personas que la "
    "construyeron. El río siempre ha sido muy importante para los agricultores de la región."
)


def synthesize(text, voice="en", speed=150):
    """``text`` spoken by espeak-ng, as a 16 kHz mono float32 array (cached across runs)."""
    from whisper_t5x.audio.loading import load_audio

    if ESPEAK is None:
        pytest.skip("espeak-ng not installed")
    os.makedirs(_CACHE, exist_ok=True)
    key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    npy = os.path.join(_CACHE, key + ".npy")
    if os.path.exists(npy):
        return np.load(npy)
    wav = os.path.join(_CACHE, key + ".wav")
    subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-w", wav, text], check=True, capture_output=True)
    audio = load_audio(wav)  # ffmpeg resamples espeak's 22050 Hz to 16 kHz
    np.save(npy, audio)
    return audio


def synthesize_file(text, voice="en", speed=150):
    """Path of a 22050 Hz WAV file of ``text`` (the raw espeak-ng output)."""
    synthesize(text, voice, speed)
    key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    return os.path.join(_CACHE, key + ".wav")


def normalize(text):
    """Lowercase words without punctuation, accents kept; hyphens split words, apostrophes vanish."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("'", "").replace("\u2019", "")
    text = re.sub(r"[^\w\s]|_", " ", text)
    return text.split()


def wer(reference, hypothesis):
    """Word error rate of ``hypothesis`` against ``reference`` after :func:`normalize`."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)
