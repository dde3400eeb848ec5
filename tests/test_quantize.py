"""Stored decoder weights (bfloat16 / int8) and host parameters XLA's CPU client takes without a copy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._hf_models import flax_twin, random_features
from whisper_t5x.checkpoints.params import DEVICE_ALIGNMENT, aligned, cast_params, is_aligned
from whisper_t5x.model import quantize as Q
from whisper_t5x.model.layers import quantize_rows

NAME = "multilingual-80"


def _forward(model, params, seed=0):
    feats = random_features(2, model.config.num_mel_bins, seed)
    ids = np.random.RandomState(seed).randint(0, 50000, (2, 12)).astype(np.int32)
    ids[:, 0] = model.config.special_tokens.sot
    return np.asarray(model(feats, ids, params=params).logits)


def test_aligned_leaves_are_used_by_xla_without_a_copy():
    x = np.arange(1000, dtype=np.float64)[1:]  # a view that starts off any 64-byte boundary
    assert x.ctypes.data % DEVICE_ALIGNMENT != 0
    y = aligned(x, np.float32)
    assert is_aligned(y) and y.dtype == np.float32 and np.array_equal(y, x.astype(np.float32))
    assert aligned(y) is y  # already fine: no copy
    if jax.default_backend() == "cpu":
        assert jax.device_put(y).unsafe_buffer_pointer() == y.ctypes.data
    tree = cast_params({"a": {"w": np.ones((3, 5), np.float32).T}, "b": np.zeros(7, np.float16)})
    assert all(is_aligned(v) for v in (tree["a"]["w"], tree["b"]))
    assert tree["b"].dtype == np.float32 and tree["a"]["w"].flags.c_contiguous  # mixed dtypes: float32


def test_loaded_checkpoint_params_are_aligned():
    _, params = flax_twin(NAME)
    leaves = jax.tree_util.tree_leaves(params)
    assert leaves and all(is_aligned(x) for x in leaves)


def test_quantize_rows_round_trip():
    x = jnp.asarray(np.random.RandomState(0).randn(4, 64).astype(np.float32))
    q, scale = quantize_rows(x)
    assert q.dtype == jnp.int8 and scale.shape == (4, 1)
    assert float(jnp.max(jnp.abs(q * scale - x) - scale / 2)) <= 1e-6
    q0, s0 = quantize_rows(jnp.zeros((2, 8)))  # an all-zero row must not divide by zero
    assert np.all(np.asarray(q0) == 0) and np.all(np.isfinite(np.asarray(s0)))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8_step"])
def test_store_weights_tree_and_round_trip(dtype):
    """The decoder step's storages; ``"int8"`` (encoder too) is checked by the test below."""
    _, params = flax_twin(NAME)
    stored = Q.store_weights(params, dtype)
    assert Q.weights_dtype_of(params) == "float32" and Q.weights_dtype_of(stored) == dtype
    layer = stored["decoder"]["layers"]["0"]
    assert np.asarray(layer["fc1"]["kernel"]).dtype == (np.int8 if dtype.startswith("int8") else Q._bfloat16())
    assert np.asarray(layer["encoder_attn"]["k_proj"]["kernel"]).dtype == np.float32  # run once per row: kept
    assert np.asarray(stored["encoder"]["layers"]["0"]["fc1"]["kernel"]).dtype == np.float32
    assert np.asarray(params["decoder"]["layers"]["0"]["fc1"]["kernel"]).dtype == np.float32  # input untouched
    if dtype.startswith("int8"):
        assert layer["fc1"]["kernel_scale"].shape == (layer["fc1"]["kernel"].shape[1],)
        assert stored["decoder"]["embed_tokens"]["embedding_scale"].shape == (51865,)
    assert Q.stored_bytes(stored) < Q.stored_bytes(params) / (3.5 if dtype.startswith("int8") else 1.9)
    restored = Q.restore_weights(stored)
    w = np.asarray(params["decoder"]["layers"]["1"]["fc2"]["kernel"])
    r = restored["decoder"]["layers"]["1"]["fc2"]["kernel"]
    peak = np.abs(w).max(axis=0)
    bound = peak / 127 / 2 if dtype.startswith("int8") else peak * 2.0 ** -8
    assert np.all(np.abs(r - w) <= bound[None, :] + 1e-7)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(params)


def test_store_weights_refuses_bad_input():
    _, params = flax_twin(NAME)
    with pytest.raises(Q.WeightsDtypeError, match="weights_dtype"):
        Q.store_weights(params, "int4")
    with pytest.raises(Q.WeightsDtypeError, match="already stored"):
        Q.store_weights(Q.store_weights(params, "int8"), "bfloat16")
    with pytest.raises(Q.WeightsDtypeError, match="not a Whisper"):
        Q.store_weights({"encoder": {}}, "int8")
    assert Q.store_weights(params, "float32") is params


@pytest.mark.parametrize("dtype,tolerance", [("bfloat16", 0.015), ("int8_step", 0.05), ("int8", 0.05)])
def test_stored_weights_logits_close_to_float32(dtype, tolerance):
    """Teacher-forced logits with stored decoder weights: mean error within ``tolerance`` of the logits'
    spread (measured 0.005 bf16, 0.020 int8 on this random model, whose large init spread amplifies
    errors), and the float32 tree through the same code gives the float32 logits exactly."""
    model, params = flax_twin(NAME)
    ref = _forward(model, params)
    out = _forward(model, Q.store_weights(params, dtype))
    err = np.abs(out - ref).mean() / ref.std()
    assert err < tolerance, err
    assert err > 1e-4  # the stored weights were really used
    np.testing.assert_array_equal(_forward(model, Q.store_weights(params, "float32")), ref)


def test_scan_layout_stores_per_layer_scales():
    loop_model, loop_params = flax_twin(NAME)
    scan_model, scan_params = flax_twin(NAME, scan_layers=True)
    loop = _forward(loop_model, Q.store_weights(loop_params, "int8"))
    stored = Q.store_weights(scan_params, "int8")
    layers = stored["decoder"]["layers"]
    assert layers["fc1"]["kernel"].dtype == np.int8 and layers["fc1"]["kernel_scale"].shape == (2, 256)
    np.testing.assert_allclose(_forward(scan_model, stored), loop, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "int8_step", "bfloat16"])
def test_pipeline_with_stored_weights_transcribes_jfk_as_float32(dtype):
    """Real tiny.en weights through the pipeline (VAD rows on the engine, and word alignment): the text
    with stored decoder weights is the float32 text (jfk is short and clear: no word may change)."""
    import os

    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.audio.loading import load_audio

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    jfk = load_audio(os.path.join(root, "samples", "jfk.flac"))
    ref = FlaxWhisperPipeline("tiny.en", batch_size=2, fallback=False)
    stored = FlaxWhisperPipeline((ref.model, Q.store_weights(ref.decoder.params, dtype)), batch_size=2,
                                 fallback=False)
    want = ref(jfk, long_form="vad")["text"]
    got = stored(jfk, long_form="vad", return_timestamps="word")
    assert "ask not what your country" in got["text"].lower()
    assert got["text"] == want
    assert len(got["chunks"]) >= 20 and all(c["timestamp"][0] is not None for c in got["chunks"])


def test_vocab_dtype_keeps_an_int8_tables_scales():
    """``DecodeOptions.vocab_dtype`` casts a float table; an int8-stored table keeps its own scaled product
    (a cast copy would drop the per-row scales and give wrong logits)."""
    from whisper_t5x.decoding.generate import DecodeOptions, vocab_table

    table = np.ones((4, 3), np.float32)
    options = DecodeOptions(vocab_dtype="bfloat16")
    assert vocab_table({"decoder": {"embed_tokens": {"embedding": table}}}, options).dtype == jnp.bfloat16
    stored = {"decoder": {"embed_tokens": {"embedding": table.astype(np.int8),
                                           "embedding_scale": np.ones(4, np.float32)}}}
    assert vocab_table(stored, options) is None
    assert vocab_table({"decoder": {"embed_tokens": {"embedding": table}}}, DecodeOptions()) is None


def test_int8_stores_the_encoder_and_cross_kv_projections():
    """``"int8"``: every encoder dense kernel and the cross-attention K/V projections int8 with a
    scale per output channel as well; convolutions, biases, norms and position tables stay float32."""
    _, params = flax_twin(NAME)
    stored = Q.store_weights(params, "int8")
    assert Q.weights_dtype_of(stored) == "int8"
    assert Q.weights_dtype_of(Q.store_weights(params, "int8_step")) == "int8_step"
    step = Q.store_weights(params, "int8_step")  # the decoder step only: encoder and cross K/V float
    assert np.asarray(step["encoder"]["layers"]["1"]["fc1"]["kernel"]).dtype == np.float32
    assert np.asarray(step["decoder"]["layers"]["0"]["encoder_attn"]["k_proj"]["kernel"]).dtype == np.float32
    enc = stored["encoder"]["layers"]["1"]
    for path in (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
                 ("self_attn", "out_proj"), ("fc1",), ("fc2",)):
        node = enc
        for key in path:
            node = node[key]
        assert node["kernel"].dtype == np.int8 and node["kernel_scale"].shape == (node["kernel"].shape[1],)
    cross = stored["decoder"]["layers"]["0"]["encoder_attn"]
    assert cross["k_proj"]["kernel"].dtype == np.int8 and cross["v_proj"]["kernel"].dtype == np.int8
    assert stored["decoder"]["layers"]["0"]["fc1"]["kernel"].dtype == np.int8  # the step's weights as "int8_step"
    for kept in (stored["encoder"]["conv1"]["kernel"], stored["encoder"]["conv2"]["kernel"],
                 enc["fc1"]["bias"], enc["final_layer_norm"]["scale"],
                 stored["encoder"]["embed_positions"]["embedding"]):
        assert np.asarray(kept).dtype == np.float32
    assert np.asarray(params["encoder"]["layers"]["1"]["fc1"]["kernel"]).dtype == np.float32  # input untouched
    restored = Q.restore_weights(stored)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(params)
    w = np.asarray(params["encoder"]["layers"]["0"]["fc2"]["kernel"])
    bound = np.abs(w).max(axis=0) / 127 / 2
    assert np.all(np.abs(restored["encoder"]["layers"]["0"]["fc2"]["kernel"] - w) <= bound[None, :] + 1e-7)
    with pytest.raises(Q.WeightsDtypeError, match="already stored"):
        Q.store_weights(stored, "int8")


def test_int8_encoder_close_to_float32():
    """W8A8 encoder: its output within 5% (mean) of the float32 output's spread on this random model
    (measured 1.2%; the logits: 2.1% with the encoder int8, 2.0% with "int8_step")."""
    from whisper_t5x.model.whisper import WhisperModule

    model, params = flax_twin(NAME)
    stored = Q.store_weights(params, "int8")
    feats = random_features(1, model.config.num_mel_bins)
    encode = jax.jit(lambda p, f: model.module.apply({"params": p}, f, method=WhisperModule.encode))
    h32, h8 = np.asarray(encode(params, feats)), np.asarray(encode(stored, feats))
    enc_err = np.abs(h8 - h32).mean() / h32.std()
    assert 1e-4 < enc_err < 0.05, enc_err


def test_int8_scan_layout_stores_the_encoder_per_layer():
    loop_model, loop_params = flax_twin(NAME)
    scan_model, scan_params = flax_twin(NAME, scan_layers=True)
    stored = Q.store_weights(scan_params, "int8")
    layers = stored["encoder"]["layers"]
    assert layers["fc1"]["kernel"].dtype == np.int8 and layers["fc1"]["kernel_scale"].shape == (2, 256)
    assert Q.weights_dtype_of(stored) == "int8"
    np.testing.assert_allclose(_forward(scan_model, stored), _forward(loop_model, Q.store_weights(loop_params, "int8")),
                               atol=1e-3, rtol=1e-3)


def test_bf16_compute_over_int8_weights_keeps_float32_scales():
    """bfloat16 compute with int8 kernels: ``cast_float_weights`` makes the float leaves bfloat16 and keeps
    the int8 kernels and float32 scales; the logits stay within 5% (mean) of float32's spread."""
    _, params = flax_twin(NAME)
    model16, _ = flax_twin(NAME, dtype=jnp.bfloat16)
    tree = Q.cast_float_weights(Q.store_weights(params, "int8"), "bfloat16")
    fc1 = tree["encoder"]["layers"]["0"]["fc1"]
    assert fc1["kernel"].dtype == np.int8 and fc1["kernel_scale"].dtype == np.float32
    assert fc1["bias"].dtype == Q._bfloat16() and tree["encoder"]["conv1"]["kernel"].dtype == Q._bfloat16()
    ref = _forward(flax_twin(NAME)[0], params)
    err = np.abs(_forward(model16, tree) - ref).mean() / ref.std()
    assert 1e-4 < err < 0.05, err


def test_pipeline_bf16_with_int8_keeps_the_int8_storage():
    import jax.numpy as jnp

    from whisper_t5x import FlaxWhisperPipeline

    try:
        pipe = FlaxWhisperPipeline("tiny.en", dtype=jnp.bfloat16, weights_dtype="int8", batch_size=2)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"tiny.en not available: {e}")
    assert pipe.weights_dtype == "int8"  # before: loaded bf16, the int8 request silently dropped
    leaves = jax.tree_util.tree_leaves_with_path(pipe.decoder.params)
    kinds = {str(np.asarray(v).dtype) for _, v in leaves}
    assert "int8" in kinds and "bfloat16" in kinds
    scales = [np.asarray(v).dtype for p, v in leaves if "_scale" in jax.tree_util.keystr(p)]  # not a norm's scale
    assert scales and all(d == np.float32 for d in scales)
