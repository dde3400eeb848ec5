"""The compiled generate loop against transformers' generate on random-init models."""

import jax
import numpy as np
import pytest
import torch

from tests import _hf_models as H
from whisper_t5x.decoding import generate as decoding

MAX_NEW = 20


def _features_with_padded_row(n_mels, batch=3):
    features = H.random_features(batch, n_mels)
    features[-1] = -0.75  # a padding row: what log-mel of digital silence looks like
    return features


def _hf_generate(name, features, num_beams, multilingual):
    model = H.configure_hf_generation(H.hf_model(name))
    kwargs = dict(language="en", task="transcribe") if multilingual else {}
    suppress = list(H.flax_twin(name)[0].default_suppress_tokens())
    with torch.no_grad():
        out = model.generate(
            torch.tensor(features), max_new_tokens=MAX_NEW, num_beams=num_beams, suppress_tokens=suppress,
            begin_suppress_tokens=[220, model.generation_config.eos_token_id], **kwargs,
        )
    return out.numpy()


def _ours(name, features, num_beams, multilingual):
    model, params = H.flax_twin(name)
    prefix = 4 if multilingual else 2  # sot, [lang, task], notimestamps
    out = model.generate(features, params=params, language="en" if multilingual else None,
                         task="transcribe" if multilingual else None, max_length=prefix + MAX_NEW, num_beams=num_beams)
    return np.asarray(out.sequences)[:, prefix:], out


def _trim(rows, eot):
    """Token lists up to and including the first end-of-text."""
    result = []
    for row in rows:
        row = list(row)
        result.append(row[: row.index(eot) + 1] if eot in row else row)
    return result


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("name", ["multilingual-80", "english-only"])
def test_tokens_identical_to_transformers(name, num_beams):
    multilingual = name != "english-only"
    n_mels = H.hf_model(name).config.num_mel_bins
    features = _features_with_padded_row(n_mels)
    eot = H.hf_model(name).generation_config.eos_token_id or 50257
    ours, _ = _ours(name, features, num_beams, multilingual)
    ref = _hf_generate(name, features, num_beams, multilingual)
    eot = H.flax_twin(name)[0].config.eos_token_id
    assert _trim(ours, eot) == _trim(ref, eot)
    # The comparison is not vacuous: rows differ from each other and are not one repeated token.
    assert len({tuple(r) for r in _trim(ours, eot)}) > 1


def test_one_beam_equals_greedy():
    model, params = H.flax_twin("multilingual-80")
    features = _features_with_padded_row(80)
    greedy = model.generate(features, params=params, language="en", task="transcribe", max_length=24)
    options = model.decode_options(language="en", task="transcribe", max_length=24)
    import dataclasses

    one_beam = jax.jit(lambda p, f: decoding.beam_generate(model.module, p, f, dataclasses.replace(options, num_beams=1)))(
        params, features
    )
    np.testing.assert_array_equal(np.asarray(one_beam.sequences), np.asarray(greedy.sequences))


def test_output_fields_and_padding():
    model, params = H.flax_twin("multilingual-80")
    out = model.generate(_features_with_padded_row(80), params=params, max_length=30)
    assert out.sequences.shape == (3, 30) and out.sequences.dtype == np.int32
    special = model.config.special_tokens
    seq = np.asarray(out.sequences)
    assert (seq[:, 0] == special.sot).all()
    assert np.isin(seq[:, 1], special.language_ids).all()  # detected language forced per row
    assert (seq[:, 1] == np.asarray(out.language_token)).all()
    assert (seq[:, 2] == special.transcribe).all() and (seq[:, 3] == special.no_timestamps).all()
    for row, n in zip(seq, np.asarray(out.num_tokens)):
        tail = row[4 + n:]
        assert (tail == special.eot).all()  # padded with end-of-text after the text
    assert np.all((np.asarray(out.no_speech_prob) >= 0) & (np.asarray(out.no_speech_prob) <= 1))
    assert np.all(np.asarray(out.avg_logprob) <= 0)
    assert np.all((np.asarray(out.language_prob) > 0) & (np.asarray(out.language_prob) <= 1))


def test_sampling_is_reproducible_and_temperature_changes_tokens():
    model, params = H.flax_twin("multilingual-80")
    features = H.random_features(2, 80)
    kw = dict(params=params, language="en", max_length=24)
    a = model.generate(features, temperature=1.0, rng=jax.random.PRNGKey(1), **kw)
    b = model.generate(features, temperature=1.0, rng=jax.random.PRNGKey(1), **kw)
    c = model.generate(features, temperature=1.0, rng=jax.random.PRNGKey(2), **kw)
    greedy = model.generate(features, **kw)
    np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))
    assert not np.array_equal(np.asarray(a.sequences), np.asarray(c.sequences))
    assert not np.array_equal(np.asarray(a.sequences), np.asarray(greedy.sequences))


def test_prompt_conditions_the_decoding():
    model, params = H.flax_twin("multilingual-80")
    features = H.random_features(1, 80)
    plain = model.generate(features, params=params, language="en", max_length=24)
    prompted = model.generate(features, params=params, language="en", max_length=24, prompt_ids=[400, 401, 402])
    assert prompted.sequences.shape == (1, 24)
    assert not np.array_equal(np.asarray(plain.sequences), np.asarray(prompted.sequences))
    with pytest.raises(ValueError, match="decoder positions"):
        model.generate(features, params=params, max_length=448, prompt_ids=[400, 401])


def test_english_only_checkpoint_rejects_translation_and_other_languages():
    model, params = H.flax_twin("english-only")
    features = H.random_features(1, 80)
    with pytest.raises(ValueError, match="English-only.*translate"):
        model.generate(features, params=params, task="translate")
    with pytest.raises(ValueError, match="English-only"):
        model.generate(features, params=params, language="es")
    out = model.generate(features, params=params, language="en", max_length=10)
    assert int(out.sequences[0, 1]) == model.config.special_tokens.no_timestamps


def test_bad_arguments_are_clear_errors():
    model, params = H.flax_twin("multilingual-80")
    features = H.random_features(1, 80)
    with pytest.raises(ValueError, match="task"):
        model.generate(features, params=params, task="summarize")
    with pytest.raises(ValueError, match="klingon"):
        model.generate(features, params=params, language="klingon")
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(features, params=params, num_beams=0)


def test_rows_longer_than_the_first_cache_stages_match_transformers():
    """Rows of 280 tokens cross the cache growth (at 160 positions) of the staged loop."""
    name, new = "multilingual-80", 280
    model, params = H.flax_twin(name)
    eot = model.config.special_tokens.eot
    assert decoding.cache_spans(4, 4 + new) == (160, 4 + new)
    features = H.random_features(2, 80)
    suppress = sorted(set(model.default_suppress_tokens()) | {eot})  # no row may stop early
    ours = model.generate(features, params=params, language="en", task="transcribe", max_length=4 + new,
                          suppress_tokens=suppress)
    ours = np.asarray(ours.sequences)[:, 4:]
    hf = H.configure_hf_generation(H.hf_model(name))
    with torch.no_grad():
        ref = hf.generate(torch.tensor(features), max_new_tokens=new, suppress_tokens=suppress,
                          begin_suppress_tokens=[220, eot], language="en", task="transcribe").numpy()
    assert ours.shape == (2, new) and (ours != eot).all()
    np.testing.assert_array_equal(ours, ref[:, -new:])


def test_greedy_and_sampling_share_one_compiled_program():
    model, params = H.flax_twin("multilingual-80")
    features = H.random_features(2, 80)
    model._generate_cache.clear()
    kw = dict(params=params, language="en", max_length=16)
    greedy = model.generate(features, **kw)
    sampled = model.generate(features, temperature=1.0, rng=jax.random.PRNGKey(1), **kw)
    assert len(model._generate_cache) == 1
    assert not np.array_equal(np.asarray(greedy.sequences), np.asarray(sampled.sequences))


def test_bf16_vocabulary_projection_stays_close_to_float32():
    model, params = H.flax_twin("multilingual-80")
    features = H.random_features(2, 80)
    kw = dict(params=params, language="en", max_length=16)
    ref = model.generate(features, **kw)
    half = model.generate(features, vocab_dtype="bfloat16", **kw)
    assert model.decode_options(vocab_dtype="bfloat16").vocab_dtype == "bfloat16"
    # Same tokens on this model; log-probabilities move by the bf16 rounding of the table only.
    np.testing.assert_array_equal(np.asarray(half.sequences), np.asarray(ref.sequences))
    np.testing.assert_allclose(np.asarray(half.avg_logprob), np.asarray(ref.avg_logprob), atol=0.02)
    assert not np.array_equal(np.asarray(half.avg_logprob), np.asarray(ref.avg_logprob))  # bf16 was used
