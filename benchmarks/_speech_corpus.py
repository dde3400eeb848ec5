"""Reproducible benchmark speech: espeak-ng reading a fixed text, 16 kHz mono float32.

The text below is original prose written for this benchmark (free to use, no
copyright concerns). It has no digits, abbreviations or hyphenated compounds,
so a simple normaliser suffices to score transcripts.

:func:`make_audio` builds a clip of a requested duration by reading sentences
one after another: cycle ``k`` reads all sentences in a fixed pseudo-random
order (seeded with ``k``; cycle 0 in text order), each sentence followed by a
short pause, until the next sentence would pass the requested duration; the
rest is filled with silence, so the clip is exactly ``seconds`` long and its
reference transcript is exactly the sentences read. Each sentence is
synthesised once (``espeak-ng -v en -s 160``), resampled from 22050 Hz to
16 kHz with soxr and cached on disk; the assembled clip is cached as ``.npy``.

Also here: :func:`normalize` (lowercase words, punctuation removed) and
:func:`wer` (word-level Levenshtein distance / reference length).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
import wave
from typing import List, Optional, Tuple

import numpy as np

SAMPLE_RATE = 16000
VOICE = "en"
SPEED = 160  # words per minute
PAUSE_S = 0.35  # silence after each sentence
CORPUS_VERSION = "1"

PASSAGES = [
    "The lighthouse keeper woke before dawn, as he had done for most of his life. He climbed the narrow stairs "
    "with a lamp in one hand and a cup of tea in the other. At the top he cleaned the great glass lens until it "
    "shone like water. Outside, the sea was calm and grey, and a few gulls were already circling over the rocks. "
    "He wrote the weather in his book, the direction of the wind and the colour of the sky. Then he sat by the "
    "window and watched the fishing boats leave the harbour one by one.",

    "In the village below, the baker had been awake even longer. She kneaded the dough on a wooden table that "
    "had belonged to her mother. The oven was hot, and the kitchen smelled of bread and butter and burning wood. "
    "When the first loaves were ready, she placed them on the shelf by the door. Her neighbours came in quietly, "
    "still half asleep, and left with warm bread wrapped in paper. Nobody paid in the morning. Everyone settled "
    "their bills at the end of the week, and nobody ever forgot.",

    "The school stood at the top of the hill, beside an old oak tree with a swing hanging from its lowest branch. "
    "The teacher was a tall woman with a soft voice and a very good memory. She knew the name of every child in "
    "the valley and the names of their parents and grandparents as well. On rainy days she read stories aloud, "
    "and the children listened without making a sound. On sunny days she took them down to the river to look at "
    "insects, flowers and stones.",

    "Every spring a travelling market came to the square. Merchants arrived in painted wagons pulled by patient "
    "horses. They sold cloth and ribbons, pots and pans, honey, cheese and dried fruit from distant hills. A man "
    "with a long beard played the violin while his daughter danced on a small wooden stage. For three days the "
    "square was full of music and laughter. Then the wagons rolled away along the coast road, and the village "
    "returned to its quiet habits.",

    "One winter a terrible storm arrived from the north. The wind howled through the streets and tore the roofs "
    "from several barns. The waves rose higher than anyone could remember and crashed against the harbour wall. "
    "The lighthouse keeper stayed at his post all night, keeping the lamp burning so that the boats could find "
    "their way home. In the morning every boat was safely tied to the pier, and the whole village climbed the "
    "path to thank him.",

    "The old keeper was embarrassed by the attention. He said that he had only done his job, and that the lamp "
    "had done most of the work. But the baker brought him a basket of bread, the teacher brought a letter "
    "written by the children, and the fishermen brought a barrel of fresh fish. He kept the letter in his coat "
    "pocket for the rest of his life. Sometimes, when the nights were long and lonely, he took it out and read it "
    "again by the light of the lamp.",

    "Years later, a young engineer came to the village to install an electric lamp that would work by itself. "
    "She was polite and careful, and she asked the old keeper to teach her everything about the light. He showed "
    "her how the lens turned, how the clockwork was wound, and how to read the moods of the sea. She wrote "
    "everything down in a thick notebook. When the new lamp was finished, she asked him to switch it on for the "
    "first time.",

    "The keeper moved into a small cottage near the bakery. He spent his mornings walking along the beach and his "
    "afternoons teaching the children how to tie knots and read the stars. In the evenings he sat outside his "
    "door and watched the beam of the lighthouse sweep across the water. It turned just as it always had, steady "
    "and bright. He said that it was strange to see it from the outside, like looking at his own house through "
    "a stranger's window.",

    "The engineer often visited him on her way back from the tower. They talked about machines and weather, "
    "about books they had read and places they wanted to see. She told him about the great cities in the south, "
    "with their bridges and trains and crowded markets. He told her about the islands in the west, where the "
    "grass grows right down to the sand and wild ponies run along the shore. Both of them agreed that the village "
    "was the best place they knew.",

    "When the keeper finally grew too old to walk to the beach, the children came to his cottage instead. They "
    "sat on the floor around his chair and asked for the story of the great storm. He told it a little "
    "differently every time, and the waves grew a little higher with every telling. Nobody minded. The children "
    "knew the story by heart, but they liked to hear it in his voice, slow and deep, like the sound of the sea "
    "on a quiet night.",

    "Today there is a small museum beside the harbour. Inside you can see the old brass lamp, the logbooks filled "
    "with careful handwriting, and the letter from the children, framed behind glass. Visitors come from far "
    "away to see it. They walk along the pier, buy warm bread from the bakery, and climb the hill to look at the "
    "oak tree by the school. In the evening they stand on the beach and wait for the lighthouse to begin its "
    "slow and patient turning.",

    "The teacher's granddaughter runs the museum now. She says that the most popular object is not the lamp or "
    "the books, but a simple wooden chair that stands in the corner. It was the chair where the keeper sat every "
    "night for forty years, watching over the sea. Children like to sit in it and look out of the window, "
    "pretending that the boats depend on them. Some of them say that they can still hear the old man humming "
    "a song about the wind.",
]


def sentences() -> List[str]:
    """The corpus as a list of sentences, in text order."""
    out = []
    for passage in PASSAGES:
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", passage) if s.strip())
    return out


def corpus_words() -> int:
    return sum(len(normalize(s)) for s in sentences())


# ---------------------------------------------------------------------- normaliser and WER
def normalize(text: str) -> List[str]:
    """Lowercase words: accents folded, apostrophes dropped, other punctuation and hyphens split words."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"['\u2019\u2018`]", "", text)
    text = re.sub(r"[^a-z0-9\s]", " ", text)
    return text.split()


from whisper_t5x.text.normalize import edit_distance  # noqa: E402 (one Levenshtein for the repo)


def wer(reference: str, hypothesis: str) -> float:
    """Normalised word error rate (0.05 = 5 %)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    return edit_distance(ref, hyp) / len(ref)


# ---------------------------------------------------------------------- synthesis
def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisper_t5x", "benchmark_speech")


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    return exe


def _synth_sentence(text: str, directory: str) -> np.ndarray:
    key = hashlib.sha1(f"{VOICE}|{SPEED}|{text}".encode()).hexdigest()[:16]
    path = os.path.join(directory, f"s_{key}.npy")
    if os.path.exists(path):
        return np.load(path)
    import soxr

    wav_bytes = subprocess.run([_espeak(), "-v", VOICE, "-s", str(SPEED), "--stdout", text],
                               check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav_bytes)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width != 2:
        raise RuntimeError(f"unexpected espeak-ng sample width {width}")
    audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    tmp = path + f".{os.getpid()}.tmp.npy"
    np.save(tmp, audio)
    os.replace(tmp, path)
    return audio


def _order(cycle: int, n: int) -> List[int]:
    if cycle == 0:
        return list(range(n))
    return [int(i) for i in np.random.default_rng(cycle).permutation(n)]


def make_audio(seconds: float, directory: Optional[str] = None) -> Tuple[np.ndarray, str]:
    """(16 kHz mono float32 audio of exactly ``seconds``, reference text of what is spoken in it)."""
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    total = int(round(seconds * SAMPLE_RATE))
    key = hashlib.sha1(f"{CORPUS_VERSION}|{VOICE}|{SPEED}|{PAUSE_S}|{total}".encode()).hexdigest()[:12]
    npy, txt = (os.path.join(directory, f"clip_{int(seconds)}s_{key}{ext}") for ext in (".npy", ".txt"))
    if os.path.exists(npy) and os.path.exists(txt):
        with open(txt, encoding="utf-8") as f:
            return np.load(npy), f.read()
    sents = sentences()
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    pieces, spoken, used = [], [], 0
    cycle, done = 0, False
    while not done:
        for i in _order(cycle, len(sents)):
            clip = _synth_sentence(sents[i], directory)
            if used + clip.size > total:
                done = True
                break
            pieces.extend([clip, pause])
            spoken.append(sents[i])
            used += clip.size + pause.size
        cycle += 1
        if not spoken:
            break
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    audio = np.concatenate([audio[:total], np.zeros(max(0, total - audio.size), np.float32)])
    reference = " ".join(spoken)
    tmp = tempfile.mktemp(dir=directory, suffix=".npy")
    np.save(tmp, audio.astype(np.float32))
    os.replace(tmp, npy)
    with open(txt, "w", encoding="utf-8") as f:
        f.write(reference)
    return audio.astype(np.float32), reference
