"""openai-whisper ``.pt`` checkpoints: ``{"dims": {...}, "model_state_dict": {...}}``.

openai's module names are renamed to transformers' names, so both formats
share the tree conversion of :mod:`whisper_t5x.checkpoints.hf`:

=================================  =====================================
openai                             transformers (without ``model.``)
=================================  =====================================
encoder.positional_embedding       encoder.embed_positions.weight
decoder.positional_embedding       decoder.embed_positions.weight
decoder.token_embedding            decoder.embed_tokens
encoder.ln_post / decoder.ln       encoder.layer_norm / decoder.layer_norm
blocks.{i}                         layers.{i}
attn / attn_ln                     self_attn / self_attn_layer_norm
cross_attn / cross_attn_ln         encoder_attn / encoder_attn_layer_norm
query / key / value / out          q_proj / k_proj / v_proj / out_proj
mlp.0 / mlp.2 / mlp_ln             fc1 / fc2 / final_layer_norm
=================================  =====================================

openai's MLP width is always ``4 * d_model``.
"""

from __future__ import annotations

import base64
import gzip
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from whisper_t5x.checkpoints import hf
from whisper_t5x.checkpoints.errors import CorruptCheckpointError, UnsupportedFormatError

# (openai fragment, transformers fragment), applied in this order to openai names.
_RENAMES = (
    ("encoder.positional_embedding", "encoder.embed_positions.weight"),
    ("decoder.positional_embedding", "decoder.embed_positions.weight"),
    ("decoder.token_embedding.", "decoder.embed_tokens."),
    ("encoder.ln_post.", "encoder.layer_norm."),
    ("decoder.ln.", "decoder.layer_norm."),
    (".blocks.", ".layers."),
    (".cross_attn_ln.", ".encoder_attn_layer_norm."),
    (".cross_attn.", ".encoder_attn."),
    (".attn_ln.", ".self_attn_layer_norm."),
    (".attn.", ".self_attn."),
    (".mlp_ln.", ".final_layer_norm."),
    (".mlp.0.", ".fc1."),
    (".mlp.2.", ".fc2."),
    (".query.", ".q_proj."),
    (".key.", ".k_proj."),
    (".value.", ".v_proj."),
    (".out.", ".out_proj."),
)
_DIMS = ("n_mels", "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
         "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")


def to_hf_name(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def to_openai_name(hf_name: str) -> str:
    name = hf_name[len("model."):] if hf_name.startswith("model.") else hf_name
    for old, new in reversed(_RENAMES):
        name = name.replace(new, old)
    return name


def dims_of(config) -> Dict[str, int]:
    return dict(
        n_mels=config.num_mel_bins,
        n_vocab=config.vocab_size,
        n_audio_ctx=config.max_source_positions,
        n_audio_state=config.d_model,
        n_audio_head=config.encoder_attention_heads,
        n_audio_layer=config.encoder_layers,
        n_text_ctx=config.max_target_positions,
        n_text_state=config.d_model,
        n_text_head=config.decoder_attention_heads,
        n_text_layer=config.decoder_layers,
    )


def decode_alignment_heads(dump: bytes, layers: int, heads: int) -> Optional[List[Tuple[int, int]]]:
    """openai's base85 + gzip boolean (layers, heads) mask as (layer, head) pairs; None if it does not fit."""
    try:
        mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
    except (ValueError, OSError):
        return None
    if mask.size != layers * heads:
        return None
    return [(int(i), int(j)) for i, j in np.argwhere(mask.reshape(layers, heads))]


def _known_alignment_heads(path: str, dims: Mapping[str, int]) -> Optional[List[Tuple[int, int]]]:
    """Alignment heads openai-whisper publishes for a file named like its model (``base.pt``...)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        import whisper
    except ImportError:
        return None
    dump = getattr(whisper, "_ALIGNMENT_HEADS", {}).get(stem)
    return None if dump is None else decode_alignment_heads(dump, dims["n_text_layer"], dims["n_text_head"])


def read(path: str) -> Tuple[Dict[str, int], Dict[str, Any], Dict[str, Any]]:
    """(dims, params in loop layout as stored, extras with ``alignment_heads``) of a ``.pt`` file."""
    checkpoint = hf.torch_load(path, "openai-whisper checkpoint")
    if not isinstance(checkpoint, Mapping) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise UnsupportedFormatError(
            f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    dims = dict(checkpoint["dims"])
    missing = [k for k in _DIMS if k not in dims]
    if missing:
        raise CorruptCheckpointError(f"{path}: 'dims' lacks {missing}")
    tensors = []
    extras: Dict[str, Any] = {}
    for name, tensor in checkpoint["model_state_dict"].items():
        if name == "alignment_heads":
            mask = hf.torch_to_numpy(tensor).astype(bool)
            extras["alignment_heads"] = [(int(i), int(j)) for i, j in np.argwhere(mask)]
            continue
        tensors.append((to_hf_name(name), hf.torch_to_numpy(tensor)))
    if "alignment_heads" not in extras:
        heads = _known_alignment_heads(path, dims)
        if heads:
            extras["alignment_heads"] = heads
    return dims, hf.from_state_dict(tensors, path), extras


def write(path: str, config, params: Mapping, dtype: Any = np.float32) -> None:
    """Write ``params`` (loop layout) as an openai-whisper ``.pt``."""
    import torch

    for name in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if getattr(config, name) != 4 * config.d_model:
            raise UnsupportedFormatError(
                f"{path}: openai-whisper fixes the MLP width at 4 x d_model ({4 * config.d_model}); "
                f"this model has {name}={getattr(config, name)}"
            )
    target = np.dtype(dtype)
    state = {}
    for name, value in hf.to_state_dict(params).items():
        state[to_openai_name(name)] = torch.from_numpy(np.ascontiguousarray(value, dtype=target))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    torch.save({"dims": dims_of(config), "model_state_dict": state}, path)
