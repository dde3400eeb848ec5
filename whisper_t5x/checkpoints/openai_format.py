"""openai-whisper ``.pt`` checkpoints: ``{"dims": ..., "model_state_dict": ...}``.

openai's module names are translated to Hugging Face's, so both share the
tree conversion in :mod:`whisper_t5x.checkpoints.hf`.
"""

from typing import Dict, Tuple

import numpy as np

# (openai name fragment, Hugging Face name fragment), applied in order.
_RENAMES = (
    ("encoder.positional_embedding", "encoder.embed_positions.weight"),
    ("decoder.positional_embedding", "decoder.embed_positions.weight"),
    ("decoder.token_embedding", "decoder.embed_tokens"),
    ("encoder.ln_post", "encoder.layer_norm"),
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


def read(path: str) -> Tuple[dict, Dict[str, np.ndarray], dict]:
    """(dims, HF-named numpy tensors, extras) from an openai ``.pt`` file."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise ValueError("not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    tensors = {}
    extras = {}
    for name, tensor in checkpoint["model_state_dict"].items():
        if name == "alignment_heads":
            mask = tensor.to_dense().numpy() if tensor.is_sparse else tensor.numpy()
            extras["alignment_heads"] = [list(map(int, ij)) for ij in np.argwhere(mask)]
            continue
        tensors[to_hf_name(name)] = tensor.float().numpy()
    return dict(checkpoint["dims"]), tensors, extras
