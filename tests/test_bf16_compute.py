"""Half-precision compute on the fast path: bfloat16 operands, float32 accumulation, close to float32."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import _hf_models as H
from whisper_t5x.model.layers import Conv1D, Dense, _conv_as_taps, accumulates_wider

NAME = "multilingual-80"


def _dots(jaxpr):
    """(operand dtypes, preferred dtype) of every dot_general in a jaxpr, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.params["preferred_element_type"])))
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                found += _dots(inner)
    return found


def test_only_half_precision_accumulates_wider():
    assert accumulates_wider(jnp.bfloat16) and accumulates_wider(jnp.float16)
    assert not accumulates_wider(jnp.float32)


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_bf16_layers_take_bf16_operands_with_float32_accumulation(layer):
    """The products of a bfloat16 Dense / Conv1D are bf16 x bf16 -> f32 (the AMX path); the result is
    bfloat16 and within bfloat16 rounding of the float64 product of the same (rounded) operands."""
    rng = np.random.RandomState(0)
    x = rng.randn(2, 30, 64).astype(np.float32)
    if layer == "dense":
        module = Dense(48, ("embed", "mlp"), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    else:
        module = Conv1D(48, "embed", strides=2, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)  # a nonzero bias
    dots = _dots(jax.make_jaxpr(lambda p, x: module.apply({"params": p}, x))(params, x).jaxpr)
    assert dots and all(ops == ("bfloat16", "bfloat16") and pref == "float32" for ops, pref in dots), dots
    y = module.apply({"params": params}, x)
    assert y.dtype == jnp.bfloat16
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)
    k = np.asarray(params["kernel"], np.float64)
    b = np.asarray(params["bias"], np.float64)
    if layer == "dense":
        want = xb @ k + b
    else:
        padded = np.pad(xb, ((0, 0), (1, 1), (0, 0)))
        want = sum(padded[:, tap:tap + 30:2] @ k[tap] for tap in range(3)) + b
    got = np.asarray(y, np.float64)
    assert np.all(np.abs(got - want) <= 2.0 ** -8 * np.abs(want) + 1e-6)  # one bfloat16 rounding of the result


@pytest.mark.parametrize("strides,length", [(1, 3000), (2, 3000), (2, 7), (1, 5)])
def test_conv_as_taps_is_the_convolution(strides, length):
    rng = np.random.RandomState(strides + length)
    x = rng.randn(2, length, 16).astype(np.float32)
    w = rng.randn(3, 16, 8).astype(np.float32)
    want = jax.lax.conv_general_dilated(x, w, (strides,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))
    got = _conv_as_taps(jnp.asarray(x), jnp.asarray(w), strides)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bf16_model_teacher_forced_logits_close_to_float32():
    """Random tiny model (large init spread, which amplifies rounding), bfloat16 compute and parameters:
    teacher-forced logits within 2% (mean) / 15% (max) of the float32 logits' spread (measured 0.8% /
    7%), float32 logits out, and most next-token choices the same."""
    from tests.test_quantize import _forward

    model32, params = H.flax_twin(NAME)
    model16, _ = H.flax_twin(NAME, dtype=jnp.bfloat16)
    ref = _forward(model32, params)
    out = _forward(model16, model16.to_bf16(params))
    assert out.dtype == np.float32
    diff = np.abs(out - ref)
    assert diff.mean() / ref.std() < 0.02, diff.mean() / ref.std()
    assert diff.max() / ref.std() < 0.15, diff.max() / ref.std()
    assert diff.mean() / ref.std() > 1e-4  # bfloat16 really used
    assert np.mean(out.argmax(-1) == ref.argmax(-1)) >= 0.8


@pytest.mark.parametrize("kv_dtype", ["bfloat16", "float32"])
def test_bf16_incremental_decoding_matches_its_full_forward(kv_dtype):
    """In bfloat16 the cached step path and the teacher-forced pass round alike (within bf16); also with
    the cache and cross K/V kept float32 (the step's attention products then run in float32)."""
    from whisper_t5x.model.whisper import WhisperModule, init_cache

    model, params = H.flax_twin(NAME, dtype=jnp.bfloat16)
    params = model.to_bf16(params)
    module, cfg = model.module, model.config
    feats = H.random_features(1, cfg.num_mel_bins)
    ids = np.random.RandomState(3).randint(0, 50000, (1, 6)).astype(np.int32)
    full = np.asarray(jax.jit(module.apply)({"params": params}, feats, ids)["logits"])
    hidden = jax.jit(lambda p, f: module.apply({"params": p}, f, method=WhisperModule.encode))(params, feats)
    first = jax.jit(lambda p, t, c, h: module.apply({"params": p}, t, cache=c, cache_index=0, encoder_hidden=h,
                                                    method=WhisperModule.decode))
    step = jax.jit(lambda p, t, c, i, kv: module.apply({"params": p}, t, cache=c, cache_index=i, cross_kv=kv,
                                                       method=WhisperModule.decode))
    out = first(params, ids[:, :1], init_cache(cfg, 1, 8, kv_dtype), hidden)
    assert out.cross_kv.k[0].dtype == jnp.bfloat16  # cross K/V computed in the compute dtype (half the bytes)
    out = out._replace(cross_kv=jax.tree_util.tree_map(lambda a: a.astype(kv_dtype), out.cross_kv))
    steps = [np.asarray(out.logits)]
    for i in range(1, ids.shape[1]):
        out = step(params, ids[:, i:i + 1], out.cache, i, out.cross_kv)
        steps.append(np.asarray(out.logits))
    cross = out.cross_kv
    assert out.cache.k[0].dtype == kv_dtype  # the cache keeps the dtype it was given
    assert cross.k[0].dtype == kv_dtype
    joined = np.concatenate(steps, axis=1)
    assert np.abs(joined - full).mean() / full.std() < 0.02


@pytest.mark.slow
def test_tiny_en_jfk_text_bf16_equals_float32():
    """Real tiny.en weights: the pipeline in bfloat16 (bf16 parameters, float32 accumulation) gives the
    float32 text of jfk word for word (short, clear speech)."""
    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.audio.loading import load_audio

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    jfk = load_audio(os.path.join(root, "samples", "jfk.flac"))
    ref = FlaxWhisperPipeline("tiny.en", batch_size=2, fallback=False)(jfk, long_form="vad")["text"]
    pipe = FlaxWhisperPipeline("tiny.en", dtype=jnp.bfloat16, batch_size=2, fallback=False)
    leaves = jax.tree_util.tree_leaves(pipe.decoder.params)
    assert all(a.dtype == jnp.bfloat16 for a in leaves)  # stored bf16: no cast per call, half the memory
    got = pipe(jfk, long_form="vad")["text"]
    assert "ask not what your country" in got.lower()
    assert got == ref


def test_encoder_alone_in_bf16():
    """``encoder_dtype=bfloat16``: the encoder computes (and keeps its parameters) in bfloat16, the decoder
    in float32 with its float32 cache; teacher-forced logits within 2% (mean) of float32's spread."""
    from tests.test_quantize import _forward
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.model.quantize import cast_float_weights

    model32, params = H.flax_twin(NAME)
    mixed = FlaxWhisperForConditionalGeneration(model32.config, encoder_dtype=jnp.bfloat16, _do_init=False)
    tree = dict(params, encoder=cast_float_weights(params["encoder"], "bfloat16"))
    assert mixed.module.encoder_dtype == jnp.bfloat16 and mixed.module.dtype == jnp.float32
    ref = _forward(model32, params)
    out = _forward(mixed, tree)
    err = np.abs(out - ref).mean() / ref.std()
    assert 1e-4 < err < 0.02, err
    shapes = jax.eval_shape(mixed.module.init, jax.random.PRNGKey(0), *mixed.dummy_inputs())["params"]
    assert shapes["encoder"]["layers"]["0"]["fc1"]["kernel"].dtype == jnp.bfloat16
    assert shapes["decoder"]["layers"]["0"]["fc1"]["kernel"].dtype == jnp.float32
