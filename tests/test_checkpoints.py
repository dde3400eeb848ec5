"""Checkpoint loading and saving (whisper_t5x.checkpoints) against the reference libraries.

Expected parameter trees are built here from a transformers state dict with an
explicit, hand-written mapping (not the package's own name mapping), so a
loader bug cannot hide behind a shared helper.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import numpy as np
import pytest

from whisper_t5x.checkpoints import (
    CheckpointError,
    export_openai_checkpoint,
    is_scan_layout,
    load_checkpoint,
    save_pretrained,
    to_loop_layout,
    to_scan_layout,
)
from whisper_t5x.model.config import WhisperConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

D, HEADS, FFN, LAYERS = 64, 4, 128, 2


# ---------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _hf_model(ffn: int = FFN, vocab: int = 51865, mels: int = 80, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, vocab_size=vocab,
        num_mel_bins=mels, max_source_positions=1500, max_target_positions=448, init_std=0.2,
    )
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped scale/bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("layer_norm.weight") else 0.0))
    return model


@functools.lru_cache(maxsize=None)
def _hf_dir(ffn: int = FFN) -> str:
    import tempfile

    directory = tempfile.mkdtemp(prefix="ckpt-hf-")
    _hf_model(ffn).save_pretrained(directory)
    return directory


def _state(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _expected_tree(state: dict, encoder_layers: int = LAYERS, decoder_layers: int = LAYERS) -> dict:
    """Our loop-layout tree from a transformers state dict, spelled out by hand."""
    used = set()

    def get(name):
        used.add("model." + name)
        return state["model." + name]

    def dense(name, bias=True):
        out = {"kernel": get(name + ".weight").T}
        if bias:
            out["bias"] = get(name + ".bias")
        return out

    def norm(name):
        return {"scale": get(name + ".weight"), "bias": get(name + ".bias")}

    def conv(name):
        return {"kernel": get(name + ".weight").transpose(2, 1, 0), "bias": get(name + ".bias")}

    def attention(name):
        return {"q_proj": dense(name + ".q_proj"), "k_proj": dense(name + ".k_proj", bias=False),
                "v_proj": dense(name + ".v_proj"), "out_proj": dense(name + ".out_proj")}

    tree = {
        "encoder": {
            "conv1": conv("encoder.conv1"),
            "conv2": conv("encoder.conv2"),
            "embed_positions": {"embedding": get("encoder.embed_positions.weight")},
            "layers": {
                str(i): {
                    "self_attn": attention(f"encoder.layers.{i}.self_attn"),
                    "self_attn_layer_norm": norm(f"encoder.layers.{i}.self_attn_layer_norm"),
                    "fc1": dense(f"encoder.layers.{i}.fc1"),
                    "fc2": dense(f"encoder.layers.{i}.fc2"),
                    "final_layer_norm": norm(f"encoder.layers.{i}.final_layer_norm"),
                }
                for i in range(encoder_layers)
            },
            "layer_norm": norm("encoder.layer_norm"),
        },
        "decoder": {
            "embed_tokens": {"embedding": get("decoder.embed_tokens.weight")},
            "embed_positions": {"embedding": get("decoder.embed_positions.weight")},
            "layers": {
                str(i): {
                    "self_attn": attention(f"decoder.layers.{i}.self_attn"),
                    "self_attn_layer_norm": norm(f"decoder.layers.{i}.self_attn_layer_norm"),
                    "encoder_attn": attention(f"decoder.layers.{i}.encoder_attn"),
                    "encoder_attn_layer_norm": norm(f"decoder.layers.{i}.encoder_attn_layer_norm"),
                    "fc1": dense(f"decoder.layers.{i}.fc1"),
                    "fc2": dense(f"decoder.layers.{i}.fc2"),
                    "final_layer_norm": norm(f"decoder.layers.{i}.final_layer_norm"),
                }
                for i in range(decoder_layers)
            },
            "layer_norm": norm("decoder.layer_norm"),
        },
    }
    leftover = set(state) - used - {"proj_out.weight"}
    assert not leftover, f"state dict entries the expected tree does not cover: {sorted(leftover)}"
    return tree


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


def _assert_trees(actual, expected, rtol=0.0, atol=0.0):
    fa, fe = _flat(actual), _flat(expected)
    assert sorted(fa) == sorted(fe), (sorted(set(fa) ^ set(fe)))[:10]
    for k in fe:
        assert fa[k].shape == fe[k].shape, (k, fa[k].shape, fe[k].shape)
        if rtol == 0 and atol == 0:
            assert np.array_equal(fa[k].astype(np.float32), fe[k].astype(np.float32)), k
        else:
            np.testing.assert_allclose(fa[k].astype(np.float32), fe[k].astype(np.float32), rtol=rtol, atol=atol,
                                       err_msg=k)


def _expected_shapes(c: WhisperConfig) -> dict:
    """Leaf shapes the brief's tree prescribes, written out independently of the package."""
    d = c.d_model
    shapes = {
        "encoder/conv1/kernel": (3, c.num_mel_bins, d), "encoder/conv1/bias": (d,),
        "encoder/conv2/kernel": (3, d, d), "encoder/conv2/bias": (d,),
        "encoder/embed_positions/embedding": (c.max_source_positions, d),
        "encoder/layer_norm/scale": (d,), "encoder/layer_norm/bias": (d,),
        "decoder/embed_tokens/embedding": (c.vocab_size, d),
        "decoder/embed_positions/embedding": (c.max_target_positions, d),
        "decoder/layer_norm/scale": (d,), "decoder/layer_norm/bias": (d,),
    }
    for part, n, ffn, attns in (("encoder", c.encoder_layers, c.encoder_ffn_dim, ("self_attn",)),
                                ("decoder", c.decoder_layers, c.decoder_ffn_dim, ("self_attn", "encoder_attn"))):
        for i in range(n):
            p = f"{part}/layers/{i}/"
            for a in attns:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    shapes[p + f"{a}/{proj}/kernel"] = (d, d)
                    if proj != "k_proj":
                        shapes[p + f"{a}/{proj}/bias"] = (d,)
                for leaf in ("scale", "bias"):
                    shapes[p + f"{a}_layer_norm/{leaf}"] = (d,)
            shapes[p + "fc1/kernel"], shapes[p + "fc1/bias"] = (d, ffn), (ffn,)
            shapes[p + "fc2/kernel"], shapes[p + "fc2/bias"] = (ffn, d), (d,)
            shapes[p + "final_layer_norm/scale"] = shapes[p + "final_layer_norm/bias"] = (d,)
    return shapes


@functools.lru_cache(maxsize=None)
def _ct2_dir(quantization):
    import tempfile

    import ctranslate2

    out = os.path.join(tempfile.mkdtemp(prefix="ckpt-ct2-"), "model")
    ctranslate2.converters.TransformersConverter(_hf_dir()).convert(out, quantization=quantization)
    return out


def _features(n_mels=80, seed=0):
    return np.random.RandomState(seed).uniform(-0.8, 0.8, (1, n_mels, 3000)).astype(np.float32)


# ---------------------------------------------------------------------- Hugging Face
@pytest.mark.parametrize("variant", ["safetensors", "pytorch_bin", "sharded_safetensors", "sharded_bin"])
def test_hugging_face_directory_loads_every_tensor(tmp_path, variant):
    model = _hf_model()
    kwargs = {"safe_serialization": "bin" not in variant}
    if variant.startswith("sharded"):
        kwargs["max_shard_size"] = "1MB"
    model.save_pretrained(tmp_path, **kwargs)
    if variant.startswith("sharded"):
        assert any(f.endswith(".index.json") for f in os.listdir(tmp_path))
    loaded = load_checkpoint(str(tmp_path))
    _assert_trees(loaded.params, _expected_tree(_state(model)))
    c = loaded.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim,
            c.vocab_size, c.num_mel_bins) == (D, LAYERS, LAYERS, HEADS, FFN, 51865, 80)
    assert all(v.dtype == np.float32 for v in _flat(loaded.params).values())
    assert loaded.source.startswith("huggingface:") and str(tmp_path) in loaded.source
    assert loaded.generation_config["is_multilingual"] is True
    assert loaded.generation_config["no_timestamps_token_id"] == 50363


def test_dtype_argument_casts_every_leaf():
    import ml_dtypes

    for dtype in (np.float16, ml_dtypes.bfloat16, "float16"):
        leaves = _flat(load_checkpoint(_hf_dir(), dtype=dtype).params).values()
        assert {v.dtype for v in leaves} == {np.dtype(dtype)}


def test_bfloat16_safetensors_load_as_stored(tmp_path):
    import ml_dtypes

    import copy

    model = _hf_model()
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path)
    loaded = load_checkpoint(str(tmp_path))
    assert {v.dtype for v in _flat(loaded.params).values()} == {np.dtype(ml_dtypes.bfloat16)}
    expected = _expected_tree({k: v.astype(ml_dtypes.bfloat16) for k, v in _state(model).items()})
    _assert_trees(loaded.params, expected)


def test_save_pretrained_round_trips_through_transformers_strictly(tmp_path):
    ref = _hf_model()
    loaded = load_checkpoint(_hf_dir())
    # Either layout, and jax arrays, are accepted.
    import jax

    scanned = jax.tree_util.tree_map(jax.numpy.asarray, to_scan_layout(loaded.params))
    save_pretrained(str(tmp_path), loaded.config, scanned, generation_config=loaded.generation_config)
    back, info = transformers.WhisperForConditionalGeneration.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ref_state, back_state = ref.state_dict(), back.state_dict()
    assert set(ref_state) == set(back_state)
    for k in ref_state:
        assert torch.equal(ref_state[k], back_state[k]), k
    assert back.config.d_model == D and back.config.encoder_ffn_dim == FFN
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "model.safetensors"):
        assert (tmp_path / name).exists()
    # And our loader reads what it wrote.
    _assert_trees(load_checkpoint(str(tmp_path)).params, loaded.params)


def test_save_pretrained_half_precision_and_tokenizer(tmp_path):
    import ml_dtypes

    loaded = load_checkpoint("tiny.en")  # float16 as stored, with a tokenizer.json
    save_pretrained(str(tmp_path / "f32"), loaded.config, loaded.params, tokenizer_file=loaded.tokenizer_file,
                    generation_config=loaded.generation_config)
    again = load_checkpoint(str(tmp_path / "f32"))
    assert again.tokenizer_file and os.path.getsize(again.tokenizer_file) == os.path.getsize(loaded.tokenizer_file)
    _assert_trees(again.params, loaded.params)  # float16 -> float32 is exact
    assert again.config.alignment_heads == loaded.config.alignment_heads
    assert again.config.suppress_tokens == loaded.config.suppress_tokens
    assert "lang_to_id" not in again.generation_config  # English-only
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in _flat(loaded.params).items()}
    from whisper_t5x.checkpoints.params import unflatten

    save_pretrained(str(tmp_path / "bf16"), loaded.config, unflatten(bf16), dtype="bfloat16")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(tmp_path / "bf16"), dtype=torch.bfloat16)
    emb = model.model.decoder.embed_tokens.weight.detach().float().numpy()
    assert np.array_equal(emb, bf16["decoder/embed_tokens/embedding"].astype(np.float32))


def test_layouts_round_trip_and_are_idempotent():
    params = load_checkpoint(_hf_dir()).params
    assert not is_scan_layout(params)
    scan = to_scan_layout(params)
    assert is_scan_layout(scan)
    assert scan["encoder"]["layers"]["fc1"]["kernel"].shape == (LAYERS, D, FFN)
    assert scan["decoder"]["layers"]["encoder_attn"]["k_proj"]["kernel"].shape == (LAYERS, D, D)
    _assert_trees(to_scan_layout(scan), scan)
    _assert_trees(to_loop_layout(scan), params)
    _assert_trees(to_loop_layout(params), params)
    # A scanned Flax tree with a module level between "layers" and the block (whisper-jax style).
    wrapped = dict(scan, encoder=dict(scan["encoder"], layers={"FlaxWhisperEncoderLayers": scan["encoder"]["layers"]}))
    _assert_trees(to_loop_layout(wrapped), params)


def test_flax_msgpack_directories(tmp_path):
    """Hugging Face's former Flax format (``{"model": tree}``), also stacked whisper-jax style."""
    from flax.serialization import msgpack_serialize

    params = load_checkpoint(_hf_dir()).params
    for name, tree in (("loop", {"model": params}),
                       ("scan", {"params": {"model": to_scan_layout(params)}})):
        directory = tmp_path / name
        directory.mkdir()
        shutil.copy(os.path.join(_hf_dir(), "config.json"), directory / "config.json")
        (directory / "flax_model.msgpack").write_bytes(msgpack_serialize(tree))
        loaded = load_checkpoint(str(directory))
        assert loaded.source.startswith("flax:")
        _assert_trees(loaded.params, params)


def test_hub_id_resolves_from_the_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--someone--whisper-mini"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(_hf_dir(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_checkpoint("someone/whisper-mini", cache_dir=str(cache))
    _assert_trees(loaded.params, _expected_tree(_state(_hf_model())))
    assert "someone/whisper-mini" in loaded.source
    with pytest.raises(CheckpointError, match=r"someone/not-cached.*not in the cache.*HF_HUB_OFFLINE"):
        load_checkpoint("someone/not-cached", cache_dir=str(cache))
    # A hub id of an installed named model falls back to the package when the hub cannot provide it.
    fallback = load_checkpoint("openai/whisper-tiny.en", cache_dir=str(cache))
    assert fallback.source.startswith("ctranslate2:tiny.en for openai/whisper-tiny.en")


# ---------------------------------------------------------------------- openai-whisper
def test_openai_export_loads_in_whisper_and_back(tmp_path):
    whisper = pytest.importorskip("whisper")
    model = _hf_model(ffn=4 * D)  # openai-whisper's MLP is 4 x d_model
    loaded = load_checkpoint(_hf_dir(4 * D))
    path = str(tmp_path / "mini.pt")
    export_openai_checkpoint(path, loaded.config, to_scan_layout(loaded.params))
    ow = whisper.load_model(path, device="cpu")
    assert ow.dims.n_text_layer == LAYERS and ow.dims.n_audio_state == D and ow.dims.n_vocab == 51865
    # openai's module computes transformers' logits on the same weights.
    feats = torch.from_numpy(_features())
    ids = torch.tensor([[50258, 50259, 50359, 50363, 1000]])
    with torch.no_grad():
        ours = ow.logits(ids, ow.embed_audio(feats))
        ref = model(input_features=feats, decoder_input_ids=ids).logits
    assert float((ours - ref).abs().max()) < 1e-3
    again = load_checkpoint(path)
    assert again.source == f"openai:{path}"
    _assert_trees(again.params, _expected_tree(_state(model)))
    assert again.config.encoder_ffn_dim == 4 * D and again.config.max_source_positions == 1500
    # float16 export, as openai publishes.
    export_openai_checkpoint(str(tmp_path / "half.pt"), loaded.config, loaded.params, dtype=np.float16)
    half = load_checkpoint(str(tmp_path / "half.pt"))
    assert {v.dtype for v in _flat(half.params).values()} == {np.dtype(np.float16)}
    _assert_trees(half.params, loaded.params, rtol=1e-3, atol=1e-4)


def test_openai_export_refuses_non_standard_mlp(tmp_path):
    loaded = load_checkpoint(_hf_dir())  # ffn 128 = 2 x d_model
    with pytest.raises(CheckpointError, match="4 x d_model"):
        export_openai_checkpoint(str(tmp_path / "x.pt"), loaded.config, loaded.params)


# ---------------------------------------------------------------------- CTranslate2
@pytest.mark.parametrize("name,d,layers,heads,vocab,multilingual", [
    ("tiny.en", 384, 4, 6, 51864, False),
    ("base", 512, 6, 8, 51865, True),
])
def test_named_models_resolve_offline(name, d, layers, heads, vocab, multilingual):
    loaded = load_checkpoint(name)
    c = loaded.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.decoder_attention_heads,
            c.vocab_size, c.encoder_ffn_dim, c.num_mel_bins, c.max_source_positions, c.max_target_positions) == (
        d, layers, layers, heads, heads, vocab, 4 * d, 80, 1500, 448)
    leaves = _flat(loaded.params)
    expected = _expected_shapes(c)
    assert sorted(leaves) == sorted(expected)
    for k, shape in expected.items():
        assert leaves[k].shape == shape, k
    assert {v.dtype for v in leaves.values()} == {np.dtype(np.float16)}  # kept as stored
    assert loaded.tokenizer_file and os.path.basename(loaded.tokenizer_file) == "tokenizer.json"
    g = loaded.generation_config
    assert g["is_multilingual"] is multilingual and c.is_multilingual is multilingual
    assert g["alignment_heads"] and c.alignment_heads and c.suppress_tokens and g["begin_suppress_tokens"]
    assert ("lang_to_id" in g) is multilingual
    if multilingual:
        assert g["lang_to_id"]["<|en|>"] == 50259 and len(g["lang_to_id"]) == 99
        assert g["task_to_id"] == {"translate": 50358, "transcribe": 50359}
    assert load_checkpoint(f"whisper-{name}").config == c  # alias


def test_tiny_en_matches_ctranslate2_computation(tmp_path):
    """Our reading of the real fp16 tiny.en, run by transformers, matches CTranslate2 running the file."""
    import ctranslate2

    loaded = load_checkpoint("tiny.en", dtype=np.float32)
    save_pretrained(str(tmp_path), loaded.config, loaded.params)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ct2_dir = os.path.dirname(loaded.tokenizer_file)
    ct = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="float32")
    feats = _features()
    ct_enc = np.array(ct.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    with torch.no_grad():
        hf_enc = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert np.abs(ct_enc - hf_enc).max() < 2e-3 * np.abs(hf_enc).max()
    special = loaded.config.special_tokens
    prompt = [special.sot, special.no_timestamps]
    result = ct.generate(ctranslate2.StorageView.from_array(feats), [prompt], beam_size=1, max_length=4,
                         return_logits_vocab=True, suppress_tokens=[], suppress_blank=False)[0]
    ct_logits = np.array(result.logits[0][0] if isinstance(result.logits[0], list) else result.logits[0]).reshape(-1)
    with torch.no_grad():
        logits = model(input_features=torch.from_numpy(feats),
                       decoder_input_ids=torch.tensor([prompt + result.sequences_ids[0]])).logits[0].numpy()

    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    assert np.abs(log_softmax(ct_logits) - log_softmax(logits[len(prompt) - 1])).max() < 1e-3
    assert list(logits[len(prompt) - 1:-1].argmax(-1)) == result.sequences_ids[0]


@pytest.mark.parametrize("quantization", [None, "float16", "bfloat16", "int8", "int8_float16", "int16"])
def test_ctranslate2_conversions_load_the_original_weights(quantization):
    loaded = load_checkpoint(_ct2_dir(quantization))
    expected = _expected_tree(_state(_hf_model()))
    assert loaded.source.startswith("ctranslate2:")
    assert loaded.config.encoder_ffn_dim == FFN and loaded.config.encoder_attention_heads == HEADS
    leaves = _flat(loaded.params)
    if quantization is None:
        _assert_trees(loaded.params, expected)
        assert {v.dtype for v in leaves.values()} == {np.dtype(np.float32)}
    elif quantization in ("float16", "bfloat16"):
        _assert_trees(loaded.params, expected, rtol=1e-3 if quantization == "float16" else 8e-3, atol=1e-6)
        assert len({v.dtype for v in leaves.values()}) == 1 and leaves["encoder/conv1/bias"].dtype.itemsize == 2
    else:
        # Quantized weights: within half a quantization step of their row (output channel);
        # int8 rows use scale 127 / max|row|, int16 one scale 2**10 / max|w| per tensor.
        assert {v.dtype for v in leaves.values()} == {np.dtype(np.float32)}  # dequantized, uniform
        fe = _flat(expected)
        assert sorted(leaves) == sorted(fe)
        for k, ref in fe.items():
            got = leaves[k].astype(np.float32)
            if k.endswith("kernel") or k.endswith("embedding") and "embed_tokens" in k:
                # per output channel: the last axis of kernels, the rows of the embedding
                if k.endswith("embedding"):
                    amax = np.abs(ref).max(axis=1, keepdims=True)
                else:
                    amax = np.abs(ref).reshape(-1, ref.shape[-1]).max(axis=0)
                if quantization == "int16":
                    # one scale per stored tensor; q, k, v are fused into one, so bound by the group
                    amax = np.abs(ref).max()
                    if "attn/" in k:
                        group = k.rsplit("/", 2)[0] + "/"
                        amax = max(np.abs(v).max() for name, v in fe.items()
                                   if name.startswith(group) and name.endswith("kernel"))
                    step = amax / 2**10
                else:
                    step = amax / 127.0
                assert np.all(np.abs(got - ref) <= step / 2 * 1.001 + 1e-7), k
                assert not np.array_equal(got, ref) or quantization == "int16", k  # really quantized
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-3 if "float16" in quantization else 0, atol=1e-6,
                                           err_msg=k)


def test_ctranslate2_model_bin_split_into_parts(tmp_path):
    source = os.path.join(_ct2_dir("int8"), "model.bin")
    with open(source, "rb") as f:
        data = f.read()
    directory = tmp_path / "split"
    shutil.copytree(_ct2_dir("int8"), directory)
    os.remove(directory / "model.bin")
    cuts = [0, 1234, len(data) // 2 + 7, len(data)]  # cuts fall inside variables
    for i in range(3):
        (directory / f"model.bin.part{i + 1}").write_bytes(data[cuts[i]:cuts[i + 1]])
    _assert_trees(load_checkpoint(str(directory)).params, load_checkpoint(_ct2_dir("int8")).params)
    # and model.bin named directly
    _assert_trees(load_checkpoint(source).params, load_checkpoint(_ct2_dir("int8")).params)


def test_ctranslate2_generation_config_from_its_config_json():
    loaded = load_checkpoint(_ct2_dir(None))
    with open(os.path.join(_ct2_dir(None), "config.json")) as f:
        extra = json.load(f)
    assert loaded.config.suppress_tokens == tuple(extra["suppress_ids"] or ())
    assert loaded.config.begin_suppress_tokens == tuple(extra["suppress_ids_begin"] or ())
    assert extra["alignment_heads"]  # the converter's default: every head of the last half of the layers
    assert [list(h) for h in loaded.config.alignment_heads] == [list(h) for h in extra["alignment_heads"]]
    assert loaded.generation_config["ctranslate2"]["binary_version"] == 6


# ---------------------------------------------------------------------- bad inputs
def test_missing_paths_and_unknown_names(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing_dir.*does not exist"):
        load_checkpoint(str(tmp_path / "missing_dir"))
    with pytest.raises(CheckpointError, match=r"no-such-model.*named models.*hub"):
        load_checkpoint("no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no checkpoint in this directory"):
        load_checkpoint(str(empty))


def test_truncated_and_corrupt_files(tmp_path):
    with open(os.path.join(_ct2_dir(None), "model.bin"), "rb") as f:
        data = f.read()
    for cut in (3, 40, len(data) // 2, len(data) - 3):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / "model.bin").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}.model\.bin.*truncated"):
            load_checkpoint(str(directory))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.bin").write_bytes(b"\x07" * 64)
    with pytest.raises(CheckpointError, match=r"junk.model\.bin.*not a CTranslate2 model"):
        load_checkpoint(str(junk))
    trailing = tmp_path / "trailing"
    trailing.mkdir()
    (trailing / "model.bin").write_bytes(data + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"trailing.model\.bin.*corrupt"):
        load_checkpoint(str(trailing))
    # A decoder flag Whisper does not have (scaled embeddings): rank 0, int8, 1 byte, then the value.
    at = data.index(b"decoder/scale_embeddings\0") + len(b"decoder/scale_embeddings\0")
    assert data[at:at + 6] == b"\x00\x01\x01\x00\x00\x00"
    flagged = tmp_path / "flagged"
    flagged.mkdir()
    (flagged / "model.bin").write_bytes(data[:at + 6] + b"\x01" + data[at + 7:])
    with pytest.raises(CheckpointError, match=r"flagged.model\.bin.*scale_embeddings=1"):
        load_checkpoint(str(flagged))
    # Truncated safetensors and a missing shard.
    hf_dir = tmp_path / "hf"
    shutil.copytree(_hf_dir(), hf_dir)
    weights = (hf_dir / "model.safetensors").read_bytes()
    (hf_dir / "model.safetensors").write_bytes(weights[: len(weights) - 100])
    with pytest.raises(CheckpointError, match=r"hf.model\.safetensors.*truncated"):
        load_checkpoint(str(hf_dir))
    sharded = tmp_path / "sharded"
    _hf_model().save_pretrained(sharded, max_shard_size="1MB")
    shard = sorted(f for f in os.listdir(sharded) if f.startswith("model-"))[0]
    os.remove(sharded / shard)
    with pytest.raises(CheckpointError, match=rf"{shard}: shard listed in the index is missing"):
        load_checkpoint(str(sharded))
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"bad\.pt: cannot read openai-whisper checkpoint"):
        load_checkpoint(str(bad_pt))


def test_config_that_does_not_match_the_weights(tmp_path):
    wrong = tmp_path / "wrong"
    shutil.copytree(_hf_dir(), wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["d_model"] = 128  # the weights are 64 wide
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"wrong.*config\.json.*d_model 128 in the config but 64 in the weights"):
        load_checkpoint(str(wrong))
    config["d_model"], config["decoder_layers"] = 64, 3
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"decoder_layers 3 in the config but 2 in the weights.*missing"):
        load_checkpoint(str(wrong))
    # Saving refuses parameters that do not fit the config, too.
    loaded = load_checkpoint(_hf_dir())
    with pytest.raises(CheckpointError, match="d_model"):
        save_pretrained(str(tmp_path / "out"), loaded.config.replace(d_model=128), loaded.params)


def test_openai_file_named_like_a_model_gets_its_published_alignment_heads(tmp_path):
    pytest.importorskip("whisper")
    loaded = load_checkpoint("tiny.en")
    path = str(tmp_path / "tiny.en.pt")
    export_openai_checkpoint(path, loaded.config, loaded.params, dtype=np.float16)
    again = load_checkpoint(path)
    _assert_trees(again.params, loaded.params)
    # openai-whisper's own table for "tiny.en" agrees with the CTranslate2 model's config.json.
    assert again.config.alignment_heads == loaded.config.alignment_heads
    # openai's default suppression set (non-speech symbols + task/control tokens), as faster-whisper ships it.
    assert set(again.config.suppress_tokens) == set(loaded.config.suppress_tokens)
