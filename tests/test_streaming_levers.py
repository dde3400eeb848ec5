"""Live-stream levers: a shorter encoder context (``audio_ctx``), its buckets, and its use by stream rows."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import _hf_models as H
from whisper_t5x.longform import stream_decode as sd
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
    assert sd.audio_ctx_for(int(4.4 * 16000), b) == 250  # 4.4 s + 0.5 s margin = 245 positions
    assert sd.audio_ctx_for(int(4.6 * 16000), b) == 500
    assert sd.audio_ctx_for(int(19.5 * 16000), b) == 1000
    assert sd.audio_ctx_for(int(19.6 * 16000), b) is None  # the whole window
    assert sd.audio_ctx_for(16000, None) is None and sd.audio_ctx_for(16000, ()) is None
    assert sd.audio_ctx_for(16000, (1500,)) is None  # a bucket of the whole window is the whole window


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
    decode = sd.decoder_decode_fn(rec, audio_ctx=sd.AUDIO_CTX_BUCKETS)
    rows = [st.StreamRow(np.zeros(int(s * 16000), np.float32)) for s in (2.0, 7.0, 3.0)]
    assert [h.words for h in decode(rows)] == [(), (), ()]
    assert [(n, r.audio_ctx) for n, r in rec.requests] == [(3, 500)]
    decode([st.StreamRow(np.zeros(25 * 16000, np.float32))])
    assert rec.requests[-1][1].audio_ctx is None
    sd.decoder_decode_fn(rec)(rows)  # off by default
    assert rec.requests[-1][1].audio_ctx is None


# ============================================================== AlignAtt during generation
def test_frames_read_while_decoding_equal_the_teacher_forced_attention_of_the_same_tokens():
    from whisper_t5x.decoding.generate import DecodeOptions, attention_frames, forced_prefix, generate
    from whisper_t5x.longform.alignment import alignment_heads

    model, params = H.flax_twin("english-only")
    features = H.random_features(2, model.config.num_mel_bins, seed=3)
    heads = alignment_heads(model.config)
    options = DecodeOptions(task=None, max_length=24, suppress_tokens=(), begin_suppress_tokens=(),
                            alignment_heads=heads, audio_ctx=500)
    out = jax.jit(lambda p, x: generate(model.module, p, x, options))(params, jnp.asarray(features))
    plain = jax.jit(lambda p, x: generate(model.module, p, x, dataclasses.replace(options, alignment_heads=())))(
        params, jnp.asarray(features))
    seqs, frames = np.asarray(out.sequences), np.asarray(out.frames)
    assert (seqs == np.asarray(plain.sequences)).all()  # recording the attention changes no token
    assert plain.frames is None and frames.shape == seqs.shape
    # teacher-forced: the attention at input t predicts token t + 1
    hidden = model.module.apply({"params": params}, jnp.asarray(features), 500, method=WhisperModule.encode)
    _, inter = model.module.apply({"params": params}, jnp.asarray(seqs), encoder_hidden=hidden,
                                  method=WhisperModule.decode, mutable=["intermediates"])
    forced = np.asarray(attention_frames(inter["intermediates"], heads, False))
    begin = 1 + len(forced_prefix(options, model.config.special_tokens, False))  # first sampled index
    # the first sampled token is predicted by the forced prefix's call: no frame; the rest: the row before
    assert (frames[:, :begin + 1] == -1).all()
    sampled = frames[:, begin + 1:]
    assert np.mean(sampled == forced[:, begin:-1]) >= 0.95  # equal up to float ties
    assert np.mean(sampled == forced[:, begin + 1:]) < 0.5  # the pairing matters: the test can fail
    assert sampled.max() < 500 and sampled.min() >= 0


def test_frame_word_times_place_each_word_at_its_latest_tokens_frame():
    groups = [[1], [2, 3], [4], [5]]
    times = sd.frame_word_times([10, 30, 25, 20, 100], groups, seconds=1.5)
    flat = lambda ts: [t for pair in ts for t in pair]  # noqa: E731
    assert flat(times) == pytest.approx([0.0, 0.2, 0.2, 0.6, 0.6, 0.6, 0.6, 1.5])  # monotone, capped at 1.5 s
    assert flat(sd.frame_word_times([-1, 5], [[1], [2]], 1.0)) == pytest.approx([0.0, 0.0, 0.0, 0.1])


@pytest.mark.slow
def test_inline_word_ends_agree_with_the_post_hoc_alignment_on_jfk():
    """tiny.en on jfk.flac: word ends from the attention read while decoding against the DTW alignment of a
    second pass. Tolerance: every word within 0.6 s, the median within 0.25 s (measured: max 0.52 s,
    median 0.14 s; the inline frame tends to fall at or before the aligned end)."""
    import os

    from tests._server_helpers import REPO
    from whisper_t5x.audio.loading import load_audio
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    pipe = FlaxWhisperPipeline("tiny.en", batch_size=4)
    audio = load_audio(os.path.join(REPO, "samples", "jfk.flac"))
    row = [st.StreamRow(audio, (), "en", True)]
    post = sd.decoder_decode_fn(pipe.decoder, sd.stream_request())(row)[0].words
    inline = sd.decoder_decode_fn(pipe.decoder, sd.stream_request(), inline_alignment=True)(row)[0].words
    assert [w.text for w in inline] == [w.text for w in post] and len(post) > 15
    gaps = np.abs([a.end - b.end for a, b in zip(inline, post)])
    assert gaps.max() <= 0.6 and np.median(gaps) <= 0.25, gaps
