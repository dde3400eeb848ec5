"""Whisper as Flax linen modules: audio encoder, incremental text decoder.

Parameter tree (``loop`` layout; ``scan`` stacks each ``layers`` subtree on a
leading ``layers`` axis)::

    encoder/{conv1, conv2, embed_positions, layers/{i}/..., layer_norm}
    decoder/{embed_tokens, embed_positions, layers/{i}/..., layer_norm}

Decoding is incremental. The decoder takes the new tokens, a preallocated
self-attention cache ``KVCache(k, v)`` with ``(batch, heads, cache_length,
kv)`` per layer and the cross-attention keys/values ``CrossKV`` with
``(batch, heads, frames, kv)`` per layer. With unscanned layers each of these
is a tuple of per-layer arrays: slicing one stacked array per layer inside the
decode loop costs a copy of the whole cross K/V every step (measured 4x slower
cross-attention on CPU). With scanned layers they are stacked on a leading
``layers`` axis, as ``lax.scan`` requires. When ``cross_kv`` is not given it
is computed from the encoder output and returned, so callers compute it once
per audio window (in the first decoder call) and reuse it for every token. New
tokens attend to the cache and to themselves as two key parts, so the cache is
written exactly once per step, after all layers, with one in-place update.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning

from whisper_t5x.model import axes as A
from whisper_t5x.model.config import WhisperConfig
from whisper_t5x.model.layers import (
    Attention,
    Conv1D,
    Dense,
    Embed,
    LayerNorm,
    _attend_all,
    attend,
    attend_fused,
    constrain,
    mask_to_bias,
)

Dtype = Any
Array = jax.Array

CACHE_AXES = (A.BATCH, A.HEADS, A.CACHE_LENGTH, A.KV)
CROSS_KV_AXES = (A.BATCH, A.HEADS, A.LENGTH, A.KV)


class KVCache(NamedTuple):
    """Decoder self-attention cache: ``(batch, heads, cache_length, kv)`` per layer
    (a tuple of layers, or stacked on a leading axis with scanned layers)."""

    k: Any
    v: Any


class CrossKV(NamedTuple):
    """Cross-attention keys/values of one encoder output: ``(batch, heads, frames,
    kv)`` per layer, laid out like :class:`KVCache`."""

    k: Any
    v: Any


class DecoderOutput(NamedTuple):
    logits: Array  # (batch, new_tokens, vocab), float32
    cache: KVCache  # the cache with the new tokens written at cache_index
    cross_kv: CrossKV


def _gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


class EncoderBlock(nn.Module):
    config: WhisperConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, _unused=None) -> Tuple[Array, None]:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(cfg.layer_norm_eps, name="self_attn_layer_norm", **kw)(x)
        attn = Attention(cfg.encoder_attention_heads, cfg.d_model, name="self_attn", **kw)
        k, v = attn.project_kv(h)
        q = attn.project_q(h)
        if cfg.attention_impl is None:
            o = attend(q, [(k, v, None)])
        else:
            o = attend_fused(q, k, v, cfg.attention_impl)
        x = x + attn.output(o)
        x = constrain(x, (A.BATCH, A.LENGTH, A.EMBED))
        h = LayerNorm(cfg.layer_norm_eps, name="final_layer_norm", **kw)(x)
        h = _gelu(Dense(cfg.encoder_ffn_dim, (A.EMBED, A.MLP), name="fc1", **kw)(h))
        h = constrain(h, (A.BATCH, A.LENGTH, A.MLP))
        x = x + Dense(cfg.d_model, (A.MLP, A.EMBED), name="fc2", **kw)(h)
        return constrain(x, (A.BATCH, A.LENGTH, A.EMBED)), None


class DecoderBlock(nn.Module):
    """One decoder layer. ``(x, per_layer) -> (x, outputs)`` so it can be scanned.

    ``per_layer`` holds this layer's ``cache_k``/``cache_v`` (may be empty along
    cache_length) and, when already computed, ``cross_k``/``cross_v``.
    ``outputs`` holds the new tokens' ``k``/``v`` and the ``cross_k``/``cross_v``
    computed here when they were not given.
    """

    config: WhisperConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, per_layer, encoder_hidden, cache_bias, new_bias):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        outputs = {}

        h = LayerNorm(cfg.layer_norm_eps, name="self_attn_layer_norm", **kw)(x)
        attn = Attention(cfg.decoder_attention_heads, cfg.d_model, name="self_attn", **kw)
        k, v = attn.project_kv(h)
        outputs["k"], outputs["v"] = k, v
        parts = [(k, v, new_bias)]
        if per_layer["cache_k"].shape[2]:
            parts.insert(0, (per_layer["cache_k"], per_layer["cache_v"], cache_bias))
        x = x + attn.output(attend(attn.project_q(h), parts))
        x = constrain(x, (A.BATCH, A.LENGTH, A.EMBED))

        h = LayerNorm(cfg.layer_norm_eps, name="encoder_attn_layer_norm", **kw)(x)
        cross = Attention(cfg.decoder_attention_heads, cfg.d_model, name="encoder_attn", **kw)
        if "cross_k" in per_layer:
            ck, cv = per_layer["cross_k"], per_layer["cross_v"]
        else:
            ck, cv = cross.project_kv(encoder_hidden)
            outputs["cross_k"], outputs["cross_v"] = ck, cv
        q = cross.project_q(h)
        # Beams share one copy of the cross K/V: fold the beams of each audio
        # row into the query length instead of repeating K/V per beam.
        beams = q.shape[0] // ck.shape[0]
        if beams > 1:
            b, t, nh, dh = q.shape
            o = attend(q.reshape(b // beams, beams * t, nh, dh), [(ck, cv, None)]).reshape(b, t, nh, dh)
        elif self.is_mutable_collection("intermediates"):
            # Word timestamps read the cross-attention weights (batch, heads, tokens, frames).
            o, probs = _attend_all(q, [(ck, cv, None)], return_probs=True)
            self.sow("intermediates", "cross_attention_weights", probs)
        else:
            o = attend(q, [(ck, cv, None)])
        x = x + cross.output(o)
        x = constrain(x, (A.BATCH, A.LENGTH, A.EMBED))

        h = LayerNorm(cfg.layer_norm_eps, name="final_layer_norm", **kw)(x)
        h = _gelu(Dense(cfg.decoder_ffn_dim, (A.EMBED, A.MLP), name="fc1", **kw)(h))
        h = constrain(h, (A.BATCH, A.LENGTH, A.MLP))
        x = x + Dense(cfg.d_model, (A.MLP, A.EMBED), name="fc2", **kw)(h)
        return constrain(x, (A.BATCH, A.LENGTH, A.EMBED)), outputs


def _scanned(block_cls, num_layers: int, num_broadcast: int):
    return nn_partitioning.scan_with_axes(
        block_cls,
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True},
        in_axes=(0,) + (nn.broadcast,) * num_broadcast,
        length=num_layers,
        axis_name=A.LAYERS,
    )


class _LayerLoop(nn.Module):
    """Unscanned layers named ``0..n-1``. Per-layer inputs and outputs are tuples
    over layers (no stacking: see the module docstring)."""

    block_cls: Any
    num_layers: int
    config: WhisperConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, per_layer, *broadcast):
        outputs = []
        for i in range(self.num_layers):
            layer_in = None if per_layer is None else {k: v[i] for k, v in per_layer.items()}
            x, out = self.block_cls(self.config, self.dtype, self.param_dtype, name=str(i))(x, layer_in, *broadcast)
            outputs.append(out)
        if outputs[0] is None:
            return x, None
        return x, {k: tuple(o[k] for o in outputs) for k in outputs[0]}


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _rematerialised(block_cls, config: WhisperConfig):
    """``block_cls`` recomputed in the backward pass per ``config.remat_policy`` (forward unchanged)."""
    if config.remat_policy == "none":
        return block_cls
    # Inside a scan the loop already stops common-subexpression elimination across layers.
    return nn.remat(block_cls, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=not config.scan_layers)


def _layers(block_cls, num_layers, num_broadcast, config, dtype, param_dtype):
    block_cls = _rematerialised(block_cls, config)
    if config.scan_layers:
        return _scanned(block_cls, num_layers, num_broadcast)(config, dtype, param_dtype, name="layers")
    return _LayerLoop(block_cls, num_layers, config, dtype, param_dtype, name="layers")


class AudioEncoder(nn.Module):
    config: WhisperConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_features: Array, audio_ctx: Optional[int] = None) -> Array:
        """``audio_ctx``: encode only the first ``audio_ctx`` positions (``2 * audio_ctx`` mel frames,
        20 ms each) with the positional embedding cut to match, as whisper.cpp's ``-ac`` does; the
        output then has ``audio_ctx`` positions. For audio that ends early in its window (live
        streams): the encoder's cost falls with the positions, at some cost in accuracy."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        expected = (cfg.num_mel_bins, cfg.num_frames)
        if input_features.ndim != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(
                f"input_features has shape {tuple(input_features.shape)}; this model expects "
                f"(batch, {expected[0]}, {expected[1]}): {expected[0]} mel bins and 30 s of frames"
            )
        length = cfg.max_source_positions
        if audio_ctx is not None:
            if not 1 <= int(audio_ctx) <= cfg.max_source_positions:
                raise ValueError(f"audio_ctx must be in [1, {cfg.max_source_positions}], got {audio_ctx!r}")
            length = int(audio_ctx)
            input_features = input_features[:, :, :2 * length]
        x = constrain(input_features, (A.BATCH, A.NUM_MEL, A.LENGTH))
        x = jnp.transpose(x, (0, 2, 1)).astype(self.dtype)
        x = _gelu(Conv1D(cfg.d_model, A.NUM_MEL, name="conv1", **kw)(x))
        x = _gelu(Conv1D(cfg.d_model, A.CHANNELS, strides=2, name="conv2", **kw)(x))
        positions = Embed(cfg.max_source_positions, cfg.d_model, (A.LENGTH, A.EMBED), name="embed_positions", **kw)
        x = constrain(x + positions.table()[None, :length], (A.BATCH, A.LENGTH, A.EMBED))
        layers = _layers(EncoderBlock, cfg.encoder_layers, 0, cfg, self.dtype, self.param_dtype)
        x, _ = layers(x, None)
        x = LayerNorm(cfg.layer_norm_eps, name="layer_norm", **kw)(x)
        return constrain(x, (A.BATCH, A.LENGTH, A.EMBED))


class TextDecoder(nn.Module):
    config: WhisperConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        cache: Optional[KVCache] = None,
        cache_index: Any = 0,
        encoder_hidden: Optional[Array] = None,
        cross_kv: Optional[CrossKV] = None,
        positions: Optional[Array] = None,
        cache_mask: Optional[Array] = None,
        token_mask: Optional[Array] = None,
        output_embedding: Optional[Array] = None,
    ) -> DecoderOutput:
        """``output_embedding``: the token table to project onto the vocabulary with, when it should
        differ from ``embed_tokens`` in dtype (see :meth:`Embed.attend`)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, new_len = input_ids.shape
        if cross_kv is None and encoder_hidden is None:
            raise ValueError("the decoder needs either encoder_hidden or precomputed cross_kv")
        if cache is None:
            cache = init_cache(cfg, batch, 0, self.dtype)
        cache_len = cache.k.shape[-2] if cfg.scan_layers else cache.k[0].shape[-2]
        cache_index = jnp.asarray(cache_index, jnp.int32)
        # A vector ``cache_index`` (batch,) gives every row its own position (decode slots of the
        # engine, :mod:`whisper_t5x.decoding.slots`): its own position embedding, its own visible cache
        # prefix, and its new keys/values written at its own index.
        per_row = cache_index.ndim == 1
        row_index = cache_index[:, None] if per_row else cache_index

        if positions is None:
            positions = row_index + jnp.arange(new_len, dtype=jnp.int32)[None, :]
        tokens = Embed(cfg.vocab_size, cfg.d_model, (A.VOCAB, A.EMBED), name="embed_tokens", **kw)
        pos_table = Embed(
            cfg.max_target_positions, cfg.d_model, (A.LENGTH, A.EMBED), name="embed_positions", **kw
        )
        x = tokens(input_ids) + pos_table(jnp.broadcast_to(positions, (batch, new_len)))
        x = constrain(x, (A.BATCH, A.LENGTH, A.EMBED))

        # Masks are built once here, not per layer. Cache slot j is visible when
        # it was written before this call (j < cache_index) and not masked out.
        cache_ok = jnp.arange(cache_len)[None, :] < row_index  # (1 or batch, cache_len)
        if cache_mask is not None:
            cache_ok = cache_ok & cache_mask.astype(bool)
        cache_bias = mask_to_bias(cache_ok[:, None, None, :])
        new_ok = jnp.tril(jnp.ones((new_len, new_len), bool))[None, None]
        if token_mask is not None:
            new_ok = new_ok & token_mask.astype(bool)[:, None, None, :]
        new_bias = mask_to_bias(new_ok)

        per_layer = {"cache_k": cache.k, "cache_v": cache.v}
        if cross_kv is not None:
            per_layer["cross_k"], per_layer["cross_v"] = cross_kv.k, cross_kv.v
        layers = _layers(DecoderBlock, cfg.decoder_layers, 3, cfg, self.dtype, self.param_dtype)
        x, out = layers(x, per_layer, encoder_hidden, cache_bias, new_bias)
        x = LayerNorm(cfg.layer_norm_eps, name="layer_norm", **kw)(x)
        logits = constrain(tokens.attend(x, output_embedding), (A.BATCH, A.LENGTH, A.VOCAB))

        per_layer_axes = lambda names: (A.LAYERS,) + names if cfg.scan_layers else names  # noqa: E731
        constrain_all = lambda value, names: _map_layers(  # noqa: E731
            lambda a: constrain(a, per_layer_axes(names)), value, cfg.scan_layers
        )
        if cross_kv is None:
            cross_kv = CrossKV(constrain_all(out["cross_k"], CROSS_KV_AXES), constrain_all(out["cross_v"], CROSS_KV_AXES))

        def write(old, new):
            if not cache_len:
                return new.astype(self.dtype)
            new = new.astype(old.dtype)  # the cache's own dtype (float32 caches under bfloat16 compute)
            if per_row:
                # One scatter of every row's new positions (batch axis: 1 when layers are stacked).
                batch_axis = new.ndim - 4
                update = lambda o, n, i: jax.lax.dynamic_update_slice(  # noqa: E731
                    o, n, (0,) * (n.ndim - 2) + (i, 0))
                return jax.vmap(update, in_axes=(batch_axis, batch_axis, 0), out_axes=batch_axis)(
                    old, new, cache_index)
            start = (0,) * (new.ndim - 2) + (cache_index, 0)
            return jax.lax.dynamic_update_slice(old, new, start)

        if cfg.scan_layers:
            cache = KVCache(write(cache.k, out["k"]), write(cache.v, out["v"]))
        else:
            cache = KVCache(tuple(map(write, cache.k, out["k"])), tuple(map(write, cache.v, out["v"])))
        cache = KVCache(constrain_all(cache.k, CACHE_AXES), constrain_all(cache.v, CACHE_AXES))
        return DecoderOutput(logits, cache, cross_kv)


class WhisperModule(nn.Module):
    """The full model. ``__call__`` is the teacher-forced forward pass (used by
    ``init`` and parity checks); ``encode``, ``decode`` and ``init_cache`` are the
    pieces the compiled generate loop calls."""

    config: WhisperConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # The encoder's compute (and parameter) dtype when it should differ from the decoder's: on a CPU with
    # bfloat16 matrix units the encoder (large products) gains from bfloat16 while a decoding step (products
    # of a few rows, memory bound) does not. None: ``dtype`` / ``param_dtype``.
    encoder_dtype: Optional[Dtype] = None

    def setup(self):
        enc = self.encoder_dtype
        self.encoder = AudioEncoder(self.config, enc or self.dtype, enc or self.param_dtype)
        self.decoder = TextDecoder(self.config, self.dtype, self.param_dtype)

    def __call__(
        self,
        input_features: Array,
        decoder_input_ids: Array,
        decoder_attention_mask: Optional[Array] = None,
        decoder_position_ids: Optional[Array] = None,
        return_dict: bool = True,
        deterministic: bool = True,
    ):
        del deterministic  # inference only: no dropout
        hidden = self.encoder(input_features)
        out = self.decoder(
            decoder_input_ids,
            encoder_hidden=hidden,
            positions=decoder_position_ids,
            token_mask=decoder_attention_mask,
        )
        if not return_dict:
            return out.logits, hidden
        return {"logits": out.logits, "encoder_last_hidden_state": hidden}

    def encode(self, input_features: Array, audio_ctx: Optional[int] = None) -> Array:
        return self.encoder(input_features, audio_ctx)

    def decode(self, input_ids: Array, **kwargs) -> DecoderOutput:
        return self.decoder(input_ids, **kwargs)


def _map_layers(fn, value, scanned: bool):
    return fn(value) if scanned else tuple(fn(a) for a in value)


def init_cache(config: WhisperConfig, batch_size: int, cache_length: int, dtype: Dtype = jnp.float32) -> KVCache:
    """A zeroed self-attention cache for ``cache_length`` decoder positions."""
    heads = config.decoder_attention_heads
    shape = (batch_size, heads, cache_length, config.d_model // heads)
    if config.scan_layers:
        zeros = jnp.zeros((config.decoder_layers,) + shape, dtype)
        return KVCache(zeros, zeros)
    layers = tuple(jnp.zeros(shape, dtype) for _ in range(config.decoder_layers))
    return KVCache(layers, layers)


def map_batch(fn, tree, config: WhisperConfig):
    """Apply ``fn(array, batch_axis)`` to every array of a cache or cross K/V."""
    axis = 1 if config.scan_layers else 0
    return jax.tree_util.tree_map(lambda a: fn(a, axis), tree)
