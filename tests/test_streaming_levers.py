"""Live-stream levers: a shorter encoder context (``audio_ctx``), its buckets, and its use by stream rows."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import _hf_models as H
from whisper_t5x.longform import streaming as st
from whisper_t5x.model.whisper import WhisperModule

TOL = 1e-4


def _short_reference_encoder(name, positions):
    """transformers' encoder of the same weights built for ``positions`` encoder positions (its positional
    table cut to them): what encoding only the first ``positions`` positions must equal."""
    import transformers

    full = H.hf_model(name)
    config = H.hf_config(name, max_source_positions=positions)
    encoder = transformers.models.whisper.modeling_whisper.WhisperEncoder(config).eval()
    state = {k[len("model.encoder."):]: v for k, v in full.state_dict().items() if k.startswith("model.encoder.")}
    state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
    encoder.load_state_dict(state)
    return encoder


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_audio_ctx_encodes_the_first_positions_as_a_model_of_that_length_would(scan_layers):
    model, params = H.flax_twin("english-only", scan_layers=scan_layers)
    features = H.random_features(2, model.config.num_mel_bins)
    encode = lambda ctx: np.asarray(model.module.apply(  # noqa: E731
        {"params": params}, jnp.asarray(features), ctx, method=WhisperModule.encode))
    positions = 250
    with torch.no_grad():
        ref = _short_reference_encoder("english-only", positions)(torch.tensor(features[:, :, :2 * positions]))
    got = encode(positions)
    assert got.shape == (2, positions, model.config.d_model)
    assert np.abs(got - ref.last_hidden_state.numpy()).max() <= TOL
    # the whole window is the default, and differs from the short one (the test can fail)
    full = encode(None)
    assert np.abs(encode(model.config.max_source_positions) - full).max() == 0
    assert np.abs(full[:, :positions] - got).max() > 1e-3
    with pytest.raises(ValueError, match="audio_ctx"):
        encode(model.config.max_source_positions + 1)


def test_decoding_with_audio_ctx_compiles_its_own_program_and_reads_only_those_positions():
    from whisper_t5x.decoding.generate import DecodeOptions, generate

    model, params = H.flax_twin("english-only")
    features = H.random_features(1, model.config.num_mel_bins)
    base = DecodeOptions(task=None, max_length=12, suppress_tokens=(), begin_suppress_tokens=())
    short = dataclasses.replace(base, audio_ctx=100)
    assert short != base and hash(short) != hash(base)  # its own compile key
    run = lambda f, o: np.asarray(jax.jit(lambda p, x: generate(model.module, p, x, o).sequences)(  # noqa: E731
        params, jnp.asarray(f)))
    changed = features.copy()
    changed[:, :, 2 * 100:] = np.random.RandomState(5).randn(*changed[:, :, 200:].shape)
    # frames past the context do not matter with audio_ctx; they do for the whole window
    assert (run(features, short) == run(changed, short)).all()
    assert not (run(features, base) == run(changed, base)).all()


def test_audio_ctx_buckets_hold_the_row_and_a_margin():
    b = (250, 500, 750, 1000)
    assert st.audio_ctx_for(int(4.4 * 16000), b) == 250  # 4.4 s + 0.5 s margin = 245 positions
    assert st.audio_ctx_for(int(4.6 * 16000), b) == 500
    assert st.audio_ctx_for(int(19.5 * 16000), b) == 1000
    assert st.audio_ctx_for(int(19.6 * 16000), b) is None  # the whole window
    assert st.audio_ctx_for(16000, None) is None and st.audio_ctx_for(16000, ()) is None
    assert st.audio_ctx_for(16000, (1500,)) is None  # a bucket of the whole window is the whole window


class _RecordingDecoder:
    """Stands in for the long-form Decoder: records each call's request, answers silence."""

    def __init__(self, model):
        from whisper_t5x.longform.decoder import DecodedRow

        self.model, self.tokenizer, self.params, self.alignment_programs = model, model.tokenizer, None, {}
        self.requests = []
        self._row = DecodedRow((), "", 0.0, 0.9, 0.0, model.config.special_tokens.language_ids[0], True, 0.0)

    def decode(self, rows, request):
        self.requests.append((len(rows), request))
        return [self._row] * len(rows)


def test_stream_rows_are_decoded_with_the_bucket_of_the_longest_row_in_one_call():
    model, _ = H.flax_twin("english-only")
    rec = _RecordingDecoder(model)
    decode = st.decoder_decode_fn(rec, audio_ctx=st.AUDIO_CTX_BUCKETS)
    rows = [st.StreamRow(np.zeros(int(s * 16000), np.float32)) for s in (2.0, 7.0, 3.0)]
    assert [h.words for h in decode(rows)] == [(), (), ()]
    assert [(n, r.audio_ctx) for n, r in rec.requests] == [(3, 500)]
    decode([st.StreamRow(np.zeros(25 * 16000, np.float32))])
    assert rec.requests[-1][1].audio_ctx is None
    st.decoder_decode_fn(rec)(rows)  # off by default
    assert rec.requests[-1][1].audio_ctx is None
