"""WhisperTokenizer against openai-whisper's tiktoken tokenizer and transformers' WhisperTokenizerFast.

Three vocabularies: tiny.en (51864), base (51865) and a large-v3 layout (51866)
derived from the base file (no large-v3 tokenizer.json is stored locally).
"""

import numpy as np
import pytest

from tests._audio_helpers import EN_TOKENIZER, ML_TOKENIZER, jfk_text, make_large_v3_tokenizer_json, require
from whisper_t5x.text import languages
from whisper_t5x.model.config import SpecialTokens
from whisper_t5x.longform.segments import parse_row, strip_prefix
from whisper_t5x.text.tokenizer import WhisperTokenizer

SPECIAL_FIELDS = ("eot", "sot", "translate", "transcribe", "sot_lm", "sot_prev", "no_speech", "no_timestamps",
                  "timestamp_begin")


@pytest.fixture(scope="module")
def v3_path(tmp_path_factory):
    return make_large_v3_tokenizer_json(require(ML_TOKENIZER), str(tmp_path_factory.mktemp("v3") / "tokenizer.json"))


@pytest.fixture(scope="module")
def tokenizers_by_vocab(v3_path):
    return {
        51864: WhisperTokenizer.from_file(require(EN_TOKENIZER)),
        51865: WhisperTokenizer.from_file(require(ML_TOKENIZER)),
        51866: WhisperTokenizer.from_file(v3_path),
    }


@pytest.fixture(scope="module", params=[51864, 51865, 51866])
def tok(request, tokenizers_by_vocab):
    return tokenizers_by_vocab[request.param]


@pytest.fixture(scope="module")
def en(tokenizers_by_vocab):
    return tokenizers_by_vocab[51864]


@pytest.fixture(scope="module")
def ml(tokenizers_by_vocab):
    return tokenizers_by_vocab[51865]


def _openai(tok, language=None, task=None):
    wt = pytest.importorskip("whisper.tokenizer")
    if not tok.is_multilingual:
        return wt.get_tokenizer(multilingual=False)
    return wt.get_tokenizer(multilingual=True, language=language, task=task, num_languages=tok.num_languages)


def _hf_fast(path):
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperTokenizerFast(tokenizer_file=path)


# ------------------------------------------------------------------ special ids
def test_special_ids_match_openai_and_config(tok):
    ref = _openai(tok)
    for field in SPECIAL_FIELDS:
        assert getattr(tok, field) == getattr(ref, field), field
    assert tok.vocab_size == len(tok) == ref.encoding.n_vocab
    assert tok.special_tokens == SpecialTokens.for_vocab_size(tok.vocab_size)
    assert tok.language_token_ids == list(tok.special_tokens.language_ids)
    assert tok.timestamp_end == tok.vocab_size - 1


@pytest.mark.parametrize("path", [EN_TOKENIZER, ML_TOKENIZER])
def test_special_ids_match_transformers(path):
    ours, hf = WhisperTokenizer.from_file(require(path)), _hf_fast(path)
    for text, ours_id in [("<|endoftext|>", ours.eot), ("<|startoftranscript|>", ours.sot),
                          ("<|translate|>", ours.translate), ("<|transcribe|>", ours.transcribe),
                          ("<|startoflm|>", ours.sot_lm), ("<|startofprev|>", ours.sot_prev),
                          ("<|nocaptions|>", ours.no_speech), ("<|notimestamps|>", ours.no_timestamps)]:
        assert hf.convert_tokens_to_ids(text) == ours_id, text
    for code, token_id in ours.code_to_id.items():
        text = "<|iw|>" if code == "he" and not ours.is_multilingual else f"<|{code}|>"
        assert hf.convert_tokens_to_ids(text) == token_id


def test_vocabulary_kinds(tokenizers_by_vocab):
    en, ml, v3 = (tokenizers_by_vocab[v] for v in (51864, 51865, 51866))
    assert not en.is_multilingual and ml.is_multilingual and v3.is_multilingual
    assert (en.num_languages, ml.num_languages, v3.num_languages) == (99, 99, 100)
    assert en.id_to_token(en.no_speech) == ml.id_to_token(ml.no_speech) == "<|nocaptions|>"
    assert v3.id_to_token(v3.no_speech) == "<|nospeech|>"
    assert v3.language_codes[-1] == "yue" and v3.code_to_name["yue"] == "cantonese"
    assert "WhisperTokenizer(English-only" in repr(en)


# ------------------------------------------------------------------ languages
def test_language_lists_match_openai(tok):
    wt = pytest.importorskip("whisper.tokenizer")
    ref = _openai(tok)
    assert tok.language_codes == list(wt.LANGUAGES)[: tok.num_languages]
    for code in tok.language_codes:
        assert tok.language_id(code) == ref.encoding.encode_single_token(f"<|{code}|>"), code
    assert [tok.language_code(i) for i in tok.language_token_ids] == tok.language_codes


def test_language_id_forms(tok):
    en_id = tok.language_token_ids[0]
    for form in ("en", "EN", "english", "English", "<|en|>", en_id, np.int64(en_id)):
        assert tok.language_id(form) == en_id, form
    he = tok.language_id("he")
    assert tok.language_id("iw") == tok.language_id("<|iw|>") == tok.language_id("Hebrew") == he
    assert tok.language_id("castilian") == tok.language_id("es")
    assert tok.language_name("de") == "german"


def test_unknown_language_lists_valid_options(ml):
    with pytest.raises(ValueError, match=r"unknown language 'klingon'.*en, zh, de"):
        ml.language_id("klingon")
    with pytest.raises(ValueError, match="yue"):  # only the large-v3 vocabulary has Cantonese
        ml.language_id("yue")
    with pytest.raises(ValueError, match="not a language token"):
        ml.language_id(ml.sot)
    with pytest.raises(ValueError, match="unknown language"):
        languages.language_index("xx")
    assert languages.language_index("<|yue|>") == 99


def test_task_id(ml):
    assert ml.task_id("transcribe") == ml.transcribe
    assert ml.task_id("Translate") == ml.task_id("<|translate|>") == ml.translate
    with pytest.raises(ValueError, match="unknown task 'summarise'"):
        ml.task_id("summarise")


# ------------------------------------------------------------------ sot sequence
@pytest.mark.parametrize("language, task", [("en", "transcribe"), ("fr", "translate"), ("ja", None)])
def test_sot_sequence_matches_openai(tokenizers_by_vocab, language, task):
    for vocab in (51865, 51866):
        tok = tokenizers_by_vocab[vocab]
        ref = _openai(tok, language, task or "transcribe")
        assert tok.sot_sequence(language, task, timestamps=True) == list(ref.sot_sequence)
        assert tok.sot_sequence(language, task) == list(ref.sot_sequence_including_notimestamps)


def test_sot_sequence_defaults_and_english_only(ml, en):
    assert ml.sot_sequence("english") == [ml.sot, ml.language_id("en"), ml.transcribe, ml.no_timestamps]
    # No language: left to detection (openai-whisper's get_tokenizer would default to "en" instead).
    assert ml.sot_sequence() == [ml.sot, ml.no_timestamps]
    assert ml.sot_sequence(task="translate", timestamps=True) == [ml.sot, ml.translate]
    ref = _openai(en)
    assert en.sot_sequence() == en.sot_sequence("en", "transcribe") == list(ref.sot_sequence_including_notimestamps)
    assert en.sot_sequence(timestamps=True) == list(ref.sot_sequence)
    with pytest.raises(ValueError, match="English-only"):
        en.sot_sequence("fr")
    with pytest.raises(ValueError, match="translate"):
        en.sot_sequence(task="translate")


# ------------------------------------------------------------------ encode / decode
def test_encode_decode_jfk_matches_references(tok):
    text = " " + jfk_text()
    ids = tok.encode(text)
    ref = _openai(tok)
    assert ids == ref.encode(text)
    assert tok.decode(ids) == text
    full = tok.sot_sequence("en") + ids + [tok.eot]
    assert tok.decode(full) == text
    assert tok.decode(np.asarray(full)) == text


@pytest.mark.parametrize("path", [EN_TOKENIZER, ML_TOKENIZER])
def test_encode_decode_match_transformers(path):
    ours, hf = WhisperTokenizer.from_file(require(path)), _hf_fast(path)
    for text in [" " + jfk_text(), " Ich bin ein Berliner.", " 日本語のテキストです。", " naïve café — ½ ✓"]:
        ids = ours.encode(text)
        assert ids == hf(text, add_special_tokens=False).input_ids
        assert ours.decode(ids) == text
        with_specials = [ours.sot] + ids + [ours.eot]
        assert ours.decode(with_specials) == hf.decode(with_specials, skip_special_tokens=True,
                                                       clean_up_tokenization_spaces=False)


def test_decode_keeps_specials_on_request_and_drops_timestamps(ml):
    ids = ml.encode(" Hello world")
    seq = ml.sot_sequence("en", timestamps=True) + [ml.timestamp_begin] + ids + [ml.timestamp_begin + 50, ml.eot]
    assert ml.decode(seq) == " Hello world"
    ref = _openai(ml)
    assert ml.decode(seq, skip_special_tokens=False) == ref.decode([t for t in seq if t < ml.timestamp_begin])
    assert ml.decode(seq, skip_special_tokens=False).startswith("<|startoftranscript|><|en|><|transcribe|> Hello")


def test_multibyte_characters_split_across_tokens_survive(ml):
    text = " 日本語"
    ids = ml.encode(text)
    assert len(ids) > 1
    assert ml.decode([ml.sot] + ids + [ml.eot]) == text


def test_batch_decode(ml):
    a, b = ml.encode(" one"), ml.encode(" two three")
    rows = np.full((2, 6), ml.eot)
    rows[0, : len(a) + 1] = [ml.sot] + a
    rows[1, : len(b) + 1] = [ml.sot] + b
    assert ml.batch_decode(rows) == [" one", " two three"]
    assert ml.batch_decode([a, b]) == [" one", " two three"]


# ------------------------------------------------------------------ timestamps
def _timestamped(tok):
    words = jfk_text().split(", ")
    first, rest = tok.encode(" " + words[0]), tok.encode(", " + ", ".join(words[1:]))
    ts = tok.timestamp_begin
    return tok.sot_sequence("en", timestamps=True) + [ts] + first + [ts + 54, ts + 54] + rest + [ts + 500, tok.eot], first, rest


def test_decode_with_timestamps_matches_openai(tok):
    seq, _, _ = _timestamped(tok)
    assert tok.decode_with_timestamps(seq, skip_special_tokens=False) == _openai(tok).decode_with_timestamps(seq)
    text = tok.decode_with_timestamps(seq)
    assert text.startswith("<|0.00|> And so my fellow Americans<|1.08|><|1.08|>,")
    assert text.endswith("your country.<|10.00|>")
    assert tok.decode_with_timestamps([tok.timestamp_begin + 1], time_offset=30.0) == "<|30.02|>"


def _split(tok, ids, time_offset=0.0):
    """(start, end, text, tokens) per run of the shared row parser (whisper_t5x.longform.segments)."""
    sampled, _ = strip_prefix(ids, tok.sot, tok.eot, tok.timestamp_begin)
    row = parse_row(sampled, tok.eot, tok.timestamp_begin)

    def at(t):
        return None if t is None else round(t + time_offset, 6)

    return [(at(r.start), at(r.end), tok.decode(list(r.tokens)), list(r.tokens)) for r in row.runs]


def test_split_to_segments(ml):
    seq, first, rest = _timestamped(ml)
    segments = _split(ml, seq)
    assert segments == [
        (0.0, 1.08, " And so my fellow Americans", first),
        (1.08, 10.0, ml.decode(rest), rest),
    ]
    start, end, text, tokens = _split(ml, seq, time_offset=30.0)[1]
    assert (start, end) == (31.08, 40.0) and tokens == rest


def test_split_to_segments_edge_cases(ml):
    ts, a, b = ml.timestamp_begin, ml.encode(" a"), ml.encode(" b")
    # Single timestamps between segments, an unterminated final segment, a prompt before sot.
    prompt = [ml.sot_prev] + ml.encode(" earlier text")
    seq = prompt + ml.sot_sequence("en", timestamps=True) + [ts] + a + [ts + 100] + b
    assert _split(ml, seq) == [(0.0, 2.0, " a", a), (2.0, None, " b", b)]
    # A gap between two timestamps, then padding after end-of-text is ignored.
    seq = [ts + 10] + a + [ts + 20, ts + 30] + b + [ts + 40, ml.eot, ml.eot] + a
    assert _split(ml, seq) == [(0.2, 0.4, " a", a), (0.6, 0.8, " b", b)]
    # No timestamps at all; nothing at all.
    assert _split(ml, ml.sot_sequence("en") + a + [ml.eot]) == [(None, None, " a", a)]
    assert _split(ml, [ml.sot, ml.eot]) == []


def test_timestamp_token_lookup(ml):
    assert ml.token_to_id("<|0.00|>") == ml.timestamp_begin
    assert ml.token_to_id("<|30.00|>") == ml.timestamp_end
    assert ml.id_to_token(ml.timestamp_begin + 54) == "<|1.08|>"
    assert ml.token_to_id("<|en|>") == ml.language_id("en")


# ------------------------------------------------------------------ loading
def test_from_pretrained_and_errors(tmp_path, v3_path):
    import os

    assert WhisperTokenizer.from_pretrained(os.path.dirname(v3_path)).vocab_size == 51866
    assert WhisperTokenizer.from_pretrained(v3_path).vocab_size == 51866
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        WhisperTokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        WhisperTokenizer.from_file(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        WhisperTokenizer.from_file(str(bad))


def test_rejects_non_whisper_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel

    plain = tokenizers.Tokenizer(WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="not a Whisper tokenizer"):
        WhisperTokenizer(plain)
