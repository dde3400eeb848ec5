"""WhisperConfig.attention_impl: the encoder's self-attention through jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_t5x.model import layers
from whisper_t5x.model.config import WhisperConfig
from whisper_t5x.model.whisper import WhisperModule

# 300 encoder positions: over attend()'s 256-query threshold, so the default path is the chunked one.
CONFIG = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, decoder_layers=1,
                       decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                       max_source_positions=300, max_target_positions=32)


def _encode(config, dtype=jnp.float32):
    module = WhisperModule(config, dtype=dtype)
    features = jax.random.normal(jax.random.PRNGKey(1), (2, config.num_mel_bins, config.num_frames))
    ids = jnp.zeros((2, 3), jnp.int32)
    params = WhisperModule(CONFIG).init(jax.random.PRNGKey(0), features, ids)["params"]
    return np.asarray(module.apply({"params": params}, features, method=WhisperModule.encode), np.float32)


def test_default_is_the_models_own_attention():
    assert WhisperConfig().attention_impl is None
    assert "attention_impl" not in CONFIG.to_hf_dict()


def test_xla_implementation_matches_default_and_is_used(monkeypatch):
    reference = _encode(CONFIG)
    calls = []
    original = jax.nn.dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs["implementation"])
        return original(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", counting)
    fused = _encode(CONFIG.replace(attention_impl="xla"))
    assert calls == ["xla"] * CONFIG.encoder_layers
    err = np.abs(fused - reference).max() / np.abs(reference).max()
    assert err < 1e-5, err


def test_bf16_xla_implementation_close_to_f32():
    reference = _encode(CONFIG)
    fused = _encode(CONFIG.replace(attention_impl="xla"), jnp.bfloat16)
    err = np.linalg.norm(fused - reference) / np.linalg.norm(reference)
    assert err < 2e-2, err


def test_attend_fused_equals_attend_all():
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(2), 3)
    q = jax.random.normal(kq, (2, 40, 3, 8)) * 8 ** -0.5
    k, v = jax.random.normal(kk, (2, 3, 50, 8)), jax.random.normal(kv, (2, 3, 50, 8))
    np.testing.assert_allclose(layers.attend_fused(q, k, v, "xla"), layers._attend_all(q, [(k, v, None)]),
                               rtol=1e-5, atol=1e-5)


def test_unknown_implementation_is_a_named_error():
    with pytest.raises(ValueError, match="attention_impl='flash' must be one of"):
        CONFIG.replace(attention_impl="flash")
