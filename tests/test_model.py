"""The Flax model against transformers PyTorch on random-init configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import _hf_models as H
from whisper_t5x.model import axes as A
from whisper_t5x.model.whisper import WhisperModule, init_cache

TOL = 1e-4


def _reference(name, features, ids):
    with torch.no_grad():
        out = H.hf_model(name)(input_features=torch.tensor(features), decoder_input_ids=torch.tensor(ids))
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def _decoder_ids(vocab_size, batch=2, length=7, seed=1):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 50000, size=(batch, length)).astype(np.int32)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("name", sorted(H.SMALL_CONFIGS))
def test_encoder_and_logits_match_transformers(name, scan_layers):
    model, params = H.flax_twin(name, scan_layers=scan_layers)
    features = H.random_features(2, model.config.num_mel_bins)
    ids = _decoder_ids(model.config.vocab_size)
    ref_hidden, ref_logits = _reference(name, features, ids)

    hidden = model.encode(features, params=params).last_hidden_state
    out = model(features, ids, params=params)
    assert np.abs(np.asarray(hidden) - ref_hidden).max() <= TOL
    assert np.abs(np.asarray(out.logits) - ref_logits).max() <= TOL
    assert np.abs(np.asarray(out.encoder_last_hidden_state) - ref_hidden).max() <= TOL


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_incremental_decoding_equals_full_forward(scan_layers):
    """Prefill + one-token steps through the KV cache give the teacher-forced logits."""
    model, params = H.flax_twin("multilingual-80", scan_layers=scan_layers)
    features = H.random_features(2, 80)
    ids = _decoder_ids(model.config.vocab_size, length=6)
    full = np.asarray(model(features, ids, params=params).logits)

    module, variables = model.module, {"params": params}
    hidden = module.apply(variables, features, method=WhisperModule.encode)
    out = module.apply(variables, ids[:, :3], cache=init_cache(model.config, 2, 10), cache_index=0,
                       encoder_hidden=hidden, method=WhisperModule.decode)
    steps = [out.logits]
    cache, cross_kv = out.cache, out.cross_kv
    per_layer = (2, 4, 1500, 16)  # (batch, heads, frames, kv)
    if scan_layers:
        assert cross_kv.k.shape == (model.config.decoder_layers,) + per_layer
    else:
        assert [k.shape for k in cross_kv.k] == [per_layer] * model.config.decoder_layers
    for i in range(3, 6):
        out = module.apply(variables, ids[:, i:i + 1], cache=cache, cache_index=i, cross_kv=cross_kv,
                           method=WhisperModule.decode)
        cache = out.cache
        steps.append(out.logits)
    assert np.abs(np.concatenate([np.asarray(s) for s in steps], axis=1) - full).max() <= TOL


def test_every_parameter_has_logical_axes_from_the_vocabulary():
    model, params = H.flax_twin("multilingual-80", scan_layers=True)
    axes = model.params_axes
    leaves = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: hasattr(x, "names"))
    shapes = jax.tree_util.tree_leaves(params)
    assert len(leaves) == len(shapes)
    for meta, value in zip(leaves, shapes):
        assert len(meta.names) == np.ndim(value)
        assert set(meta.names) <= set(A.ALL_NAMES)
        assert len(set(meta.names)) == len(meta.names), meta.names  # one name never twice in a tensor
        assert meta.names[0] == A.LAYERS or np.ndim(value) < 3 or "conv_width" in meta.names


def test_half_precision_compute_stays_close_and_keeps_float32_softmax():
    model32, params = H.flax_twin("multilingual-80")
    model16, _ = H.flax_twin("multilingual-80", dtype=jnp.bfloat16)
    features = H.random_features(1, 80)
    ids = _decoder_ids(model32.config.vocab_size, batch=1)
    ref = np.asarray(model32(features, ids, params=params).logits)
    out = model16(features, ids, params=model16.to_bf16(params)).logits
    assert out.dtype == jnp.float32  # logits accumulate in float32
    # bfloat16 has 8 bits of mantissa: agreement to a few percent of the logit scale.
    assert np.abs(np.asarray(out) - ref).max() <= 0.05 * np.abs(ref).max()


def test_wrong_feature_shape_is_a_clear_error():
    model, params = H.flax_twin("multilingual-80")
    with pytest.raises(ValueError, match=r"expects \(batch, 80, 3000\)"):
        model.encode(np.zeros((1, 128, 3000), np.float32), params=params)
