"""The one vocabulary of logical axis names used by the Whisper model.

Every parameter and every constrained activation of the model is annotated with
names from this module only. A partitioner maps them to mesh axes with ordered
rules (see ``partitioning.rules``); the model itself never sees a mesh.

Each name means exactly one thing:

=============  ================================================================
name           meaning
=============  ================================================================
batch          audio windows (rows) of a batch; beams are folded into it
length         sequence positions: encoder frames or decoder tokens
cache_length   positions of the preallocated decoder self-attention KV cache
embed          the model width ``d_model`` (residual stream)
mlp            the hidden width of the feed-forward block
heads          attention heads
kv             the width of one attention head
joined_kv      heads * kv fused, as stored in q/k/v/out projection kernels
vocab          token vocabulary (embedding table rows and logits)
num_mel        mel-frequency bins of the input features (conv1 input channels)
channels       conv2 input channels (width d_model, named apart from ``embed``
               so that one kernel never carries the same name twice)
conv_width     the 3 taps of a convolution kernel
layers         stacked layers when scanning over layers
=============  ================================================================

The names ``joined_kv``, ``num_mel`` and ``channels`` are those of Whisper JAX's
published rule lists, so its rule tables apply unchanged.
"""

BATCH = "batch"
LENGTH = "length"
CACHE_LENGTH = "cache_length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
JOINED_KV = "joined_kv"
VOCAB = "vocab"
NUM_MEL = "num_mel"
CHANNELS = "channels"
CONV_WIDTH = "conv_width"
LAYERS = "layers"

ALL_NAMES = (
    BATCH,
    LENGTH,
    CACHE_LENGTH,
    EMBED,
    MLP,
    HEADS,
    KV,
    JOINED_KV,
    VOCAB,
    NUM_MEL,
    CHANNELS,
    CONV_WIDTH,
    LAYERS,
)
