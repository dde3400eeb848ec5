"""Small random-init transformers Whisper models for parity tests, and their Flax twins."""

import functools

import numpy as np

# Architectures covering the axes of variation the model must handle:
# 80/128 mel bins, multilingual/English-only/large-v3 vocabularies, a 2-layer decoder.
SMALL_CONFIGS = {
    "multilingual-80": dict(vocab_size=51865, num_mel_bins=80, encoder_layers=2, decoder_layers=2),
    "english-only": dict(vocab_size=51864, num_mel_bins=80, encoder_layers=2, decoder_layers=2),
    "v3-128mel": dict(vocab_size=51866, num_mel_bins=128, encoder_layers=3, decoder_layers=2),
    "deep-encoder-2-layer-decoder": dict(vocab_size=51865, num_mel_bins=80, encoder_layers=4, decoder_layers=2),
}


def hf_config(name, init_std=0.2, **overrides):
    import transformers

    values = dict(
        d_model=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        # 4 x d_model, as in every published Whisper (openai-whisper assumes it).
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        # A large init spread gives varied, non-degenerate token choices, so
        # token-level comparisons can actually fail.
        init_std=init_std,
    )
    values.update(SMALL_CONFIGS[name])
    values.update(overrides)
    return transformers.WhisperConfig(**values)


@functools.lru_cache(maxsize=None)
def hf_model(name, seed=0, init_std=0.2):
    import torch
    import transformers

    torch.manual_seed(seed)
    return transformers.WhisperForConditionalGeneration(hf_config(name, init_std)).eval()


@functools.lru_cache(maxsize=None)
def saved_hf_dir(name, seed=0, init_std=0.2):
    import tempfile

    directory = tempfile.mkdtemp(prefix=f"hf-{name}-")
    hf_model(name, seed, init_std).save_pretrained(directory)
    return directory


def flax_twin(name, scan_layers=False, seed=0, init_std=0.2, dtype=None):
    """(model, params) of our implementation loaded from the saved HF model."""
    import jax.numpy as jnp

    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    return FlaxWhisperForConditionalGeneration.from_pretrained(
        saved_hf_dir(name, seed, init_std), dtype=dtype or jnp.float32, _do_init=False, scan_layers=scan_layers
    )


def random_features(batch, n_mels, seed=0):
    return np.random.RandomState(seed).randn(batch, n_mels, 3000).astype(np.float32)


def configure_hf_generation(model):
    """Give a random-init transformers model the generation config of a real Whisper checkpoint."""
    from whisper_t5x.model.config import SpecialTokens

    special = SpecialTokens.for_vocab_size(model.config.vocab_size)
    gc = model.generation_config
    gc.is_multilingual = model.config.vocab_size >= 51865
    if gc.is_multilingual:
        gc.lang_to_id = {"<|en|>": special.first_language, "<|es|>": special.first_language + 3}
        gc.task_to_id = {"translate": special.translate, "transcribe": special.transcribe}
    else:
        # With a language table present at all, transformers detects and forces
        # a language token even for English-only checkpoints.
        for attr in ("lang_to_id", "task_to_id"):
            if hasattr(gc, attr):
                delattr(gc, attr)
    gc.no_timestamps_token_id = special.no_timestamps
    gc.decoder_start_token_id = special.sot
    gc.max_initial_timestamp_index = 50
    gc.eos_token_id = special.eot
    gc.pad_token_id = special.eot
    return model


def eot_twin(name="multilingual-80", eot_scale=2.6):
    """``flax_twin(name)`` with the end-of-text row of the token table scaled up, so greedy rows end at
    different lengths (the engine's refill and tail tests need rows that end apart)."""
    import jax.numpy as jnp

    model, params = flax_twin(name)
    emb = np.asarray(params["decoder"]["embed_tokens"]["embedding"]).copy()
    emb[model.config.special_tokens.eot] *= eot_scale
    params = {**params, "decoder": {**params["decoder"], "embed_tokens": {
        **params["decoder"]["embed_tokens"], "embedding": jnp.asarray(emb)}}}
    return model, params
