"""A tiny Flax model annotated with the Whisper logical axis names (test only).

It has the kernel layouts of the real model: an embedding ("vocab", "embed"),
q/k/v kernels ("embed", "joined_kv"), an output projection ("joined_kv",
"embed"), an MLP ("embed", "mlp") / ("mlp", "embed") and a scale ("embed",),
and constrains activations with ("batch", "length", ...) logical names.
"""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning

param_with_axes = nn_partitioning.param_with_axes

VOCAB, EMBED, MLP, HEADS, KV = 48, 16, 64, 8, 4
BATCH, LENGTH = 8, 6


def constrain(x, *names):
    return nn.with_logical_constraint(x, names)


class ToyModel(nn.Module):
    extra_param_axes: tuple = ()  # e.g. ("conv_width",) to add a kernel with other names

    @nn.compact
    def __call__(self, tokens):
        init = nn.initializers.normal(0.2)
        emb = param_with_axes("embedding", init, (VOCAB, EMBED), axes=("vocab", "embed"))
        x = constrain(jnp.take(emb, tokens, axis=0), "batch", "length", "embed")
        b, l = tokens.shape

        def proj(name):
            k = param_with_axes(name, init, (EMBED, HEADS * KV), axes=("embed", "joined_kv"))
            y = (x @ k).reshape(b, l, HEADS, KV)
            return constrain(y, "batch", "length", "heads", "kv")

        q, k, v = proj("q"), proj("k"), proj("v")
        att = jax.nn.softmax(jnp.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(KV), axis=-1)
        o = jnp.einsum("bhlm,bmhd->blhd", att, v).reshape(b, l, HEADS * KV)
        o = constrain(o, "batch", "length", "joined_kv")
        wo_att = param_with_axes("out", init, (HEADS * KV, EMBED), axes=("joined_kv", "embed"))
        x = constrain(x + o @ wo_att, "batch", "length", "embed")
        scale = param_with_axes("scale", nn.initializers.ones, (EMBED,), axes=("embed",))
        wi = param_with_axes("wi", init, (EMBED, MLP), axes=("embed", "mlp"))
        wo = param_with_axes("wo", init, (MLP, EMBED), axes=("mlp", "embed"))
        h = constrain(jax.nn.gelu((x * scale) @ wi), "batch", "length", "mlp")
        x = constrain(x + h @ wo, "batch", "length", "embed")
        if self.extra_param_axes:
            extra = param_with_axes("extra", nn.initializers.ones, (3,) * len(self.extra_param_axes),
                                    axes=tuple(self.extra_param_axes))
            x = x * jnp.sum(extra)
        logits = constrain(x @ emb.T, "batch", "length", "vocab")
        return logits


def tokens(batch=BATCH, length=LENGTH, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, size=(batch, length)).astype(np.int32)


def init_fn(model=None):
    model = model or ToyModel()
    return lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))


def to_bf16(params):
    return jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
