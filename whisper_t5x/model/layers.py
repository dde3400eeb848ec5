"""Flax building blocks with logical axis names on every parameter.

Parameters are declared with ``flax.linen.partitioning.param_with_axes`` (T5X
style): ``init`` returns a ``params_axes`` collection beside ``params`` that
names every dimension, so a partitioner can shard the model by rules alone.
Parameters are stored in ``param_dtype`` and cast to the compute ``dtype`` at
use; layer norms and softmax always run in float32.

Half-precision compute (``dtype`` bfloat16 or float16, :func:`accumulates_wider`):
every product takes half-precision operands and accumulates in float32
(``preferred_element_type``), the form XLA's CPU backend runs on bfloat16
matrix units (Intel AMX; avx512_bf16 elsewhere); a Dense adds its bias in
float32 and rounds once to the compute dtype. The width-3 convolutions run as
three shifted products (:func:`_conv_as_taps`), since XLA's CPU convolution has
no such path. float32 compute is unchanged.

Stored weights (:mod:`whisper_t5x.model.quantize`): a :class:`Dense` kernel or
an :class:`Embed` table may arrive in another dtype than the compute dtype,
and the product is then taken in the stored dtype (:func:`stored_dot`), since
XLA's CPU dots do not fuse a weight's conversion (a converted copy is written
and read every step, so converting to float32 saved nothing):

* bfloat16 (float32 compute): the activations are rounded to bfloat16 for the
  product, accumulated in float32;
* int8 with a float32 ``kernel_scale`` / ``embedding_scale`` per output channel
  beside it: each activation row is quantised to int8 with its own scale
  (``max|x| / 127``), the product accumulates in int32, and both scales
  multiply the result (CTranslate2's int8 scheme).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning

from whisper_t5x.model import axes as A

param_with_axes = nn_partitioning.param_with_axes
Dtype = Any
Array = jax.Array

_NEG_INF = float(jnp.finfo(jnp.float32).min)


def quantize_rows(x: Array) -> Tuple[Array, Array]:
    """Symmetric int8 of each row of ``x`` (last axis): ``(q, scale)`` with ``x ~ q * scale``."""
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127.0
    scale = jnp.where(scale > 0, scale, 1.0)
    return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale


def is_stored(weight: Array, dtype: Dtype) -> bool:
    """True for a weight kept narrower than the compute ``dtype`` (int8, or bfloat16 under float32)."""
    return weight.dtype == jnp.int8 or jnp.dtype(weight.dtype).itemsize < jnp.dtype(dtype).itemsize


def stored_dot(x: Array, weight: Array, spec: str, scale: Optional[Array]) -> Array:
    """``einsum(spec, x, weight)`` in float32 for a weight kept in its stored dtype (:func:`is_stored`).

    bfloat16 (or float16) weights: the product in the weight's dtype, float32 accumulation. int8
    weights (``scale`` per output channel): int8 x int8 -> int32 with each row of ``x`` quantised by
    :func:`quantize_rows`, times both scales.
    """
    if weight.dtype == jnp.int8:
        q, row_scale = quantize_rows(x)
        y = jnp.einsum(spec, q, weight, preferred_element_type=jnp.int32).astype(jnp.float32)
        return y * row_scale * scale.astype(jnp.float32)
    return jnp.einsum(spec, x.astype(weight.dtype), weight, preferred_element_type=jnp.float32)


def accumulates_wider(dtype: Dtype) -> bool:
    """True for a half-precision compute dtype (bfloat16, float16), whose products accumulate in float32.

    XLA's CPU dot of two bfloat16 operands returning bfloat16 runs no faster than float32, while the
    same dot returning float32 (``preferred_element_type``) takes the bfloat16 matrix units (Intel
    AMX, avx512_bf16). float32 compute keeps its plain products, unchanged.
    """
    return jnp.dtype(dtype).itemsize < 4


def constrain(x: Array, names: Sequence[Optional[str]]) -> Array:
    """Constrain an activation by logical axis names (no-op without rules and mesh)."""
    return nn.with_logical_constraint(x, tuple(names))


class Dense(nn.Module):
    """``y = x @ kernel + bias`` over the last axis; kernel is ``(in, out)``."""

    features: int
    kernel_axes: Tuple[str, str]
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = param_with_axes(
            "kernel",
            nn.initializers.normal(stddev=0.02),
            (x.shape[-1], self.features),
            self.param_dtype,
            axes=self.kernel_axes,
        )
        wide = accumulates_wider(self.dtype)
        if is_stored(kernel, self.dtype):
            scale = self.get_variable("params", "kernel_scale") if kernel.dtype == jnp.int8 else None
            y = stored_dot(x, kernel, "...i,io->...o", scale)
            y = y if wide else y.astype(self.dtype)
        elif wide:  # half precision: float32 accumulation (the fast path), bias added before rounding
            y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=jnp.float32)
        else:
            y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = param_with_axes(
                "bias", nn.initializers.zeros, (self.features,), self.param_dtype, axes=(self.kernel_axes[1],)
            )
            y = y + bias.astype(y.dtype)
        return y.astype(self.dtype)


class LayerNorm(nn.Module):
    """Layer norm computed in float32, returned in the compute dtype."""

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        scale = param_with_axes("scale", nn.initializers.ones, (width,), self.param_dtype, axes=(A.EMBED,))
        bias = param_with_axes("bias", nn.initializers.zeros, (width,), self.param_dtype, axes=(A.EMBED,))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class Conv1D(nn.Module):
    """A width-3, same-padded 1-D convolution over ``(batch, length, channels)``."""

    features: int
    in_axis: str
    strides: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = param_with_axes(
            "kernel",
            nn.initializers.normal(stddev=0.02),
            (3, x.shape[-1], self.features),
            self.param_dtype,
            axes=(A.CONV_WIDTH, self.in_axis, A.EMBED),
        )
        bias = param_with_axes("bias", nn.initializers.zeros, (self.features,), self.param_dtype, axes=(A.EMBED,))
        if accumulates_wider(self.dtype):
            y = _conv_as_taps(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)
            return (y + bias.astype(jnp.float32)).astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.strides,),
            padding=[(1, 1)],
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + bias.astype(self.dtype)


def _conv_as_taps(x: Array, kernel: Array, strides: int) -> Array:
    """The width-3 same-padded convolution as one float32-accumulating product per tap, summed.

    XLA's CPU convolution of half-precision operands takes no matrix-unit path (with or without a
    float32 ``preferred_element_type``); three shifted products do (``benchmarks/amx_levers.py``).
    """
    length = (x.shape[1] - 1) // strides + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
    out = None
    for tap in range(kernel.shape[0]):
        window = jax.lax.slice_in_dim(padded, tap, tap + strides * (length - 1) + 1, stride=strides, axis=1)
        y = jnp.einsum("btc,co->bto", window, kernel[tap], preferred_element_type=jnp.float32)
        out = y if out is None else out + y
    return out


class Embed(nn.Module):
    """An embedding table; lookups are gathers, ``attend`` gives tied logits."""

    num_embeddings: int
    features: int
    table_axes: Tuple[str, str]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = param_with_axes(
            "embedding",
            nn.initializers.normal(stddev=0.02),
            (self.num_embeddings, self.features),
            self.param_dtype,
            axes=self.table_axes,
        )

    def _row_scale(self) -> Optional[Array]:
        """int8 storage: the float32 scale of each table row (None for a float table)."""
        if self.has_variable("params", "embedding_scale"):
            return self.get_variable("params", "embedding_scale")
        return None

    def __call__(self, ids: Array) -> Array:
        rows = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
        scale = self._row_scale()
        if scale is not None:
            rows = rows * jnp.take(scale, ids, axis=0)[..., None].astype(self.dtype)
        return rows

    def table(self) -> Array:
        scale = self._row_scale()
        if scale is not None:
            return (self.embedding.astype(jnp.float32) * scale[:, None]).astype(self.dtype)
        return self.embedding.astype(self.dtype)

    def attend(self, x: Array, table: Optional[Array] = None) -> Array:
        """Logits against the table, accumulated and returned in float32.

        ``table``: a copy of the table to use instead (e.g. the same values in
        bfloat16, so that a decoding step reads half the bytes); the product
        then runs in its dtype. A table stored in int8 is converted in the
        program and its row scales multiply the logits.
        """
        if table is None:
            if is_stored(self.embedding, self.dtype):
                return stored_dot(x, self.embedding, "...d,vd->...v", self._row_scale())
            table = self.embedding.astype(self.dtype)
        return jnp.einsum("...d,vd->...v", x.astype(table.dtype), table, preferred_element_type=jnp.float32)


def _query_chunk(q_len: int, target: int = 256) -> int:
    """Largest divisor of ``q_len`` not above ``target`` (1500 frames -> 250)."""
    for size in range(min(target, q_len), 0, -1):
        if q_len % size == 0:
            return size
    return q_len


def attend(q: Array, parts: Sequence[Tuple[Array, Array, Optional[Array]]]) -> Array:
    """Attention over key parts; long queries go in chunks (see :func:`_attend_all`).

    Chunking the encoder's 1500 queries keeps each chunk's score matrix in
    cache: about 30% faster on CPU than one ``(1500, 1500)`` matrix per head,
    with identical results. Biases must then not depend on the query position.
    """
    q_len = q.shape[1]
    if q_len > 256 and len(parts) == 1 and parts[0][2] is None and _per_head_pays():
        return _attend_per_head(q, parts[0][0], parts[0][1])
    chunk = _query_chunk(q_len)
    if q_len <= 256 or chunk == q_len or any(b is not None and b.shape[-2] != 1 for _, _, b in parts):
        return _attend_all(q, parts)
    b, _, h, d = q.shape
    chunks = jnp.moveaxis(q.reshape(b, q_len // chunk, chunk, h, d), 1, 0)
    out = jax.lax.map(lambda qc: _attend_all(qc, parts), chunks)
    return jnp.moveaxis(out, 0, 1).reshape(b, q_len, h, d)


def _per_head_pays() -> bool:
    """The per-head loop is a CPU cache optimisation: on a GPU or TPU it serialises small matmuls
    (a single-GPU train step ran at 1.5-2.9% MFU with it), so it is taken only on a single CPU device."""
    return jax.default_backend() == "cpu" and _single_device_trace()


def _single_device_trace() -> bool:
    """True unless tracing under a mesh of several devices (``jax.set_mesh``).

    Under a mesh the batch and head axes may be sharded, and looping over them
    would gather them; there the all-heads chunking of :func:`attend` is used.
    """
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or mesh.size <= 1


def _attend_per_head(q: Array, k: Array, v: Array) -> Array:
    """Unmasked attention of many queries (the encoder's), one head at a time in query chunks.

    Looping over (batch, head) pairs and ~500-query chunks keeps each score
    block (500 x 1500 floats) in cache, and the softmax is normalised after the
    value product (on ``(chunk, kv)`` instead of ``(chunk, keys)``). Measured
    on a 2-core CPU: 0.16 s vs 0.20 s per ``base`` encoder layer at batch 2 for
    the all-heads chunking of :func:`attend`; results agree to ~4e-6. Its
    gradient (training) is :func:`_heads_attention_bwd`, which recomputes each
    score block instead of storing them all.
    """
    b, t, h, d = q.shape
    chunk = _query_chunk(t, 512)
    qh = jnp.swapaxes(q, 1, 2).reshape(b * h, t // chunk, chunk, d)
    kh = k.astype(q.dtype).reshape(b * h, k.shape[2], d)
    vh = v.astype(q.dtype).reshape(b * h, v.shape[2], d)
    out = _heads_attention(qh, kh, vh)  # (b * h, t // chunk, chunk, d)
    return jnp.swapaxes(out.reshape(b, h, t, d), 1, 2)


def _heads_forward(qh: Array, kh: Array, vh: Array, with_lse: bool):
    """Per-head, per-chunk attention; with ``with_lse`` also each query's log-sum-exp of its scores."""

    def one_chunk(qc, kk, vv):
        s = jnp.einsum("td,sd->ts", qc, kk, preferred_element_type=jnp.float32)
        m = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - m)
        o = jnp.einsum("ts,sd->td", e.astype(qh.dtype), vv, preferred_element_type=jnp.float32)
        total = jnp.sum(e, axis=-1, keepdims=True)
        o = (o / total).astype(qh.dtype)
        return (o, (m + jnp.log(total))[:, 0]) if with_lse else o

    def one_head(args):
        qs, kk, vv = args
        return jax.lax.map(lambda qc: one_chunk(qc, kk, vv), qs)

    return jax.lax.map(one_head, (qh, kh, vh))


@jax.custom_vjp
def _heads_attention(qh: Array, kh: Array, vh: Array) -> Array:
    return _heads_forward(qh, kh, vh, with_lse=False)


def _heads_attention_fwd(qh, kh, vh):
    out, lse = _heads_forward(qh, kh, vh, with_lse=True)
    return out, (qh, kh, vh, out, lse)


def _heads_attention_bwd(residuals, d_out):
    """Flash-attention style gradient: per head, scan the query chunks, recompute the chunk's
    probabilities from the saved log-sum-exp, accumulate dK and dV. Five chunk-sized products and
    no (queries x keys) array kept per head; autodiff of the loops above stores every chunk's scores
    and runs about three times slower on a CPU."""
    qh, kh, vh, out, lse = residuals
    dtype = qh.dtype

    def one_head(args):
        qs, kk, vv, os_, ls, dos = args
        delta = jnp.sum(dos.astype(jnp.float32) * os_.astype(jnp.float32), axis=-1)  # (chunks, chunk)

        def chunk_step(carry, xs):
            dk, dv = carry
            qc, lc, doc, dc = xs
            s = jnp.einsum("td,sd->ts", qc, kk, preferred_element_type=jnp.float32)
            p = jnp.exp(s - lc[:, None])
            dv = dv + jnp.einsum("ts,td->sd", p.astype(dtype), doc, preferred_element_type=jnp.float32)
            dp = jnp.einsum("td,sd->ts", doc, vv, preferred_element_type=jnp.float32)
            ds = (p * (dp - dc[:, None])).astype(dtype)
            dq = jnp.einsum("ts,sd->td", ds, kk, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("ts,td->sd", ds, qc, preferred_element_type=jnp.float32)
            return (dk, dv), dq.astype(dtype)

        zeros = jnp.zeros(kk.shape, jnp.float32)
        (dk, dv), dq = jax.lax.scan(chunk_step, (zeros, zeros), (qs, ls, dos.astype(dtype), delta))
        return dq, dk.astype(kk.dtype), dv.astype(vv.dtype)

    return jax.lax.map(one_head, (qh, kh, vh, out, lse, d_out))


_heads_attention.defvjp(_heads_attention_fwd, _heads_attention_bwd)


def _product_dtype(q: Array, kv: Array):
    """The dtype of an attention product: the queries', unless keys/values are stored in another float
    dtype, whose product is then taken in theirs (bfloat16 cross K/V under float32 compute; float32
    caches under bfloat16 compute, where XLA's CPU matrix-vector products of a decoding step are
    slower in bfloat16): converting the few queries is cheap, converting the keys is not."""
    return kv.dtype if jnp.issubdtype(kv.dtype, jnp.floating) and kv.dtype != q.dtype else q.dtype


def _attend_all(q: Array, parts: Sequence[Tuple[Array, Array, Optional[Array]]], return_probs: bool = False):
    """Softmax attention of ``q`` over the concatenation of several key/value parts.

    ``q`` is ``(batch, q_len, heads, kv)`` and already scaled. Each part is
    ``(k, v, bias)`` with ``k, v`` of shape ``(batch, heads, k_len, kv)`` (heads
    before length, so the per-head matmuls read keys and values contiguously:
    on CPU a ``(batch, length, heads)`` layout costs a transpose of the whole
    cache per decoding step) and an
    additive float32 ``bias`` broadcastable to ``(batch, heads, q_len, k_len)``.
    Splitting keys into parts lets the decoder attend to its KV cache and to the
    new tokens without first writing the new tokens into the cache. Scores and
    softmax are float32.
    """
    scores = []
    for k, v, bias in parts:
        kind = _product_dtype(q, k)  # keys stored narrower (bfloat16 cross K/V): the product in their dtype
        s = jnp.einsum("bthd,bhsd->bhts", q.astype(kind), k.astype(kind), preferred_element_type=jnp.float32)
        scores.append(s if bias is None else s + bias)
    joined = scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)
    probs = jax.nn.softmax(joined, axis=-1)
    out = None
    start = 0
    for (k, v, _), s in zip(parts, scores):
        kind = _product_dtype(q, v)
        p = probs[..., start:start + s.shape[-1]].astype(kind)
        start += s.shape[-1]
        o = jnp.einsum("bhts,bhsd->bthd", p, v.astype(kind), preferred_element_type=jnp.float32)
        out = o if out is None else out + o
    if return_probs:
        return out.astype(q.dtype), probs
    return out.astype(q.dtype)


def attend_fused(q: Array, k: Array, v: Array, implementation: str) -> Array:
    """Unmasked attention through ``jax.nn.dot_product_attention`` (e.g. cuDNN's flash kernel on GPU).

    Same layouts as :func:`attend` (``q`` already scaled, ``k``/``v`` heads before length); the
    fused kernels want ``(batch, length, heads, kv)``, so keys and values are swapped back.
    """
    to_length_major = lambda x: jnp.swapaxes(x, 1, 2).astype(q.dtype)  # noqa: E731
    return jax.nn.dot_product_attention(
        q, to_length_major(k), to_length_major(v), scale=1.0, implementation=implementation
    ).astype(q.dtype)


def mask_to_bias(mask: Array) -> Array:
    """Boolean "may attend" mask to an additive float32 bias."""
    return jnp.where(mask, 0.0, _NEG_INF).astype(jnp.float32)


class Attention(nn.Module):
    """Multi-head attention with Whisper's projections (``k_proj`` has no bias)."""

    num_heads: int
    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        dense = lambda use_bias, axes: Dense(  # noqa: E731
            self.width, axes, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype
        )
        self.q_proj = dense(True, (A.EMBED, A.JOINED_KV))
        self.k_proj = dense(False, (A.EMBED, A.JOINED_KV))
        self.v_proj = dense(True, (A.EMBED, A.JOINED_KV))
        self.out_proj = dense(True, (A.JOINED_KV, A.EMBED))

    def _heads(self, x: Array) -> Array:
        b, t, d = x.shape
        return constrain(x.reshape(b, t, self.num_heads, d // self.num_heads), (A.BATCH, A.LENGTH, A.HEADS, A.KV))

    def project_q(self, x: Array) -> Array:
        q = self._heads(self.q_proj(x))
        return q * jnp.asarray((q.shape[-1]) ** -0.5, q.dtype)

    def project_kv(self, h: Array) -> Tuple[Array, Array]:
        """Keys and values in the ``(batch, heads, length, kv)`` layout of :func:`attend`."""
        to_heads_major = lambda x: constrain(  # noqa: E731
            jnp.swapaxes(self._heads(x), 1, 2), (A.BATCH, A.HEADS, A.LENGTH, A.KV)
        )
        return to_heads_major(self.k_proj(h)), to_heads_major(self.v_proj(h))

    def output(self, o: Array) -> Array:
        b, t, h, d = o.shape
        return self.out_proj(o.reshape(b, t, h * d))
