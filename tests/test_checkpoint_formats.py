"""Every checkpoint format loads to the same parameters; saves round-trip into transformers."""

import os

import numpy as np
import pytest
import torch

from tests import _hf_models as H
from whisper_t5x.checkpoints import (
    CheckpointError,
    export_openai_checkpoint,
    load_checkpoint,
    save_pretrained,
    to_loop_layout,
    to_scan_layout,
)
from whisper_t5x.checkpoints import hf as hf_names

NAME = "multilingual-80"


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


def _reference_params():
    state = {k: v.detach().numpy() for k, v in H.hf_model(NAME).state_dict().items()}
    return hf_names.from_state_dict(state.items(), "reference")


def _assert_same(a, b, atol=0.0):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].shape == fb[k].shape, k
        np.testing.assert_allclose(fa[k].astype(np.float32), fb[k].astype(np.float32), atol=atol, rtol=0, err_msg=k)


@pytest.mark.parametrize("variant", ["safetensors", "pytorch_bin", "sharded"])
def test_hugging_face_directories(tmp_path, variant):
    kwargs = dict(safe_serialization=variant != "pytorch_bin")
    if variant == "sharded":
        kwargs["max_shard_size"] = "2MB"
    H.hf_model(NAME).save_pretrained(tmp_path, **kwargs)
    files = os.listdir(tmp_path)
    if variant == "sharded":
        assert any(f.endswith(".index.json") for f in files)
    loaded = load_checkpoint(str(tmp_path))
    _assert_same(loaded.params, _reference_params())
    assert loaded.config.d_model == 64 and loaded.config.decoder_layers == 2


def test_save_pretrained_round_trips_through_transformers(tmp_path):
    import transformers

    loaded = load_checkpoint(H.saved_hf_dir(NAME))
    save_pretrained(str(tmp_path), loaded.config, to_scan_layout(loaded.params))  # either layout saves
    back = transformers.WhisperForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ref = H.hf_model(NAME)
    features = torch.tensor(H.random_features(1, 80))
    ids = torch.tensor([[50258, 50259, 50359, 50363, 1000]])
    with torch.no_grad():
        a, b = back(input_features=features, decoder_input_ids=ids).logits, ref(input_features=features, decoder_input_ids=ids).logits
    assert torch.equal(a, b)
    assert set(back.state_dict()) == set(ref.state_dict())
    assert os.path.exists(tmp_path / "preprocessor_config.json")
    _assert_same(load_checkpoint(str(tmp_path)).params, loaded.params)


def test_layouts_round_trip():
    params = load_checkpoint(H.saved_hf_dir(NAME)).params
    scan = to_scan_layout(params)
    assert scan["decoder"]["layers"]["fc1"]["kernel"].shape == (2, 64, 256)
    _assert_same(to_loop_layout(scan), params)
    _assert_same(to_scan_layout(scan), scan)  # idempotent


def test_openai_checkpoint_export_and_load(tmp_path):
    import whisper

    loaded = load_checkpoint(H.saved_hf_dir(NAME))
    path = str(tmp_path / "model.pt")
    export_openai_checkpoint(path, loaded.config, loaded.params)
    model = whisper.load_model(path, device="cpu")
    assert model.dims.n_text_layer == 2 and model.dims.n_audio_state == 64
    _assert_same(load_checkpoint(path).params, loaded.params)
    # openai's model computes the same logits as transformers' on these weights.
    features = torch.tensor(H.random_features(1, 80))
    ids = torch.tensor([[50258, 50259, 50359, 50363, 1000]])
    with torch.no_grad():
        ours = model.logits(ids, model.embed_audio(features))
        ref = H.hf_model(NAME)(input_features=features, decoder_input_ids=ids).logits
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("quantization,atol", [(None, 0.0), ("float16", 2e-3), ("int8", None)])
def test_ctranslate2_conversions(tmp_path, quantization, atol):
    import ctranslate2

    out = str(tmp_path / "ct2")
    ctranslate2.converters.TransformersConverter(H.saved_hf_dir(NAME)).convert(out, quantization=quantization)
    loaded = load_checkpoint(out)
    ref = _reference_params()
    if quantization == "int8":
        # int8 rows are quantized with scale 127 / max|row|: error at most half a step per row.
        fa, fr = _flat(loaded.params), _flat(ref)
        for k in fr:
            step = np.abs(fr[k]).max() / 127.0
            assert np.abs(fa[k] - fr[k]).max() <= step + 1e-6, k
    else:
        # Whisper's key projection has no bias; CTranslate2 stores zeros that are dropped.
        _assert_same(loaded.params, ref, atol=atol)


@pytest.mark.parametrize("name,d_model,layers,heads,vocab", [("tiny.en", 384, 4, 6, 51864), ("base", 512, 6, 8, 51865)])
def test_named_models_resolve_offline(name, d_model, layers, heads, vocab):
    loaded = load_checkpoint(name)
    c = loaded.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.vocab_size) == (
        d_model, layers, layers, heads, vocab)
    assert loaded.tokenizer_file and os.path.exists(loaded.tokenizer_file)
    assert c.alignment_heads and c.suppress_tokens
    leaves = _flat(loaded.params)
    assert leaves["decoder/layers/0/encoder_attn/k_proj/kernel"].shape == (d_model, d_model)
    assert "bias" not in loaded.params["decoder"]["layers"]["0"]["encoder_attn"]["k_proj"]
    assert all(v.dtype == np.float16 for v in leaves.values())  # stored fp16, kept as stored


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*named model"):
        load_checkpoint(str(tmp_path / "missing_dir"))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint("no-such-model")
    # A truncated model.bin.
    src = os.path.join(load_checkpoint("tiny.en").source.split("(")[1].rstrip(")"), "model.bin")
    bad = tmp_path / "truncated"
    bad.mkdir()
    with open(src, "rb") as f, open(bad / "model.bin", "wb") as g:
        g.write(f.read(100_000))
    with pytest.raises(CheckpointError, match=r"model.bin.*truncated"):
        load_checkpoint(str(bad))
    # Not a CTranslate2 file at all.
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.bin"):
        load_checkpoint(str(junk))
    # config.json that does not match the weights.
    import json
    import shutil

    wrong = tmp_path / "wrong"
    shutil.copytree(H.saved_hf_dir(NAME), wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["encoder_ffn_dim"] = 512
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"wrong.*fc1/kernel.*\(64, 256\).*\(64, 512\)"):
        load_checkpoint(str(wrong))
    # A hub id with no network and no cache.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with pytest.raises(CheckpointError, match="openai/whisper-nonexistent.*hub"):
            load_checkpoint("openai/whisper-nonexistent", cache_dir=str(tmp_path / "hub"))
    finally:
        del os.environ["HF_HUB_OFFLINE"]


def test_flax_msgpack_directory(tmp_path):
    """Hugging Face's former Flax format: a msgpack tree under ``model`` beside config.json."""
    import shutil

    from flax.serialization import msgpack_serialize

    params = load_checkpoint(H.saved_hf_dir(NAME)).params
    shutil.copy(os.path.join(H.saved_hf_dir(NAME), "config.json"), tmp_path / "config.json")
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack_serialize({"model": params}))
    _assert_same(load_checkpoint(str(tmp_path)).params, params)
