"""whisper_t5x.program_cache: exported programs on disk, keyed so a stale one is never reused.

Small jitted functions stand in for the model's programs; a fresh ``CachedProgram`` over the same
directory plays the part of a new process (it has no programs in memory and must read the file).
"""

import dataclasses
import functools
import logging
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_t5x import compile_cache, program_cache
from whisper_t5x.program_cache import CachedProgram


class Out(NamedTuple):
    total: jax.Array
    scaled: jax.Array


def _step(params, x, extra, scale):
    y = jnp.tanh(x @ params["w"] + params["b"]) * scale
    if extra is not None:
        y = y + extra
    return Out(jnp.sum(y, axis=-1), y)


def _other_step(params, x, extra, scale):
    y = jnp.cos(x @ params["w"] - params["b"]) * scale  # same signature, different program
    return Out(jnp.sum(y, axis=-1), y)


def _args(dtype=np.float32, extra=False):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)).astype(dtype), "b": rng.standard_normal((3,)).astype(dtype)}
    x = rng.standard_normal((2, 4)).astype(dtype)
    return params, x, (np.ones((2, 3), dtype) if extra else None), jnp.float32(0.5)


@pytest.fixture(params=["executable", "export"])
def tier(request, monkeypatch):
    """Both tiers: compiled executables kept too (on request), or exported programs only (the default)."""
    monkeypatch.setenv(program_cache.ENV_PROGRAMS, "executables" if request.param == "executable" else "export")
    return request.param


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A program cache under tmp_path, whatever the process's compile cache or environment says."""
    for name in (compile_cache.ENV_DIR, compile_cache.ENV_DISABLE, program_cache.ENV_PROGRAMS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(compile_cache, "compile_cache_dir", lambda: str(tmp_path))
    # A pipeline built earlier in this process turned JAX's persistent compile cache on: a program compiled
    # here would come from it, and such executables are not kept (programs.py). Off for the test.
    from jax._src import compilation_cache as jax_cc

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax_cc.reset_cache()
    yield tmp_path / "programs"
    jax.config.update("jax_enable_compilation_cache", before)
    jax_cc.reset_cache()


def _read_back(stats, tier):
    return stats.executables if tier == "executable" else stats.loaded


def _files(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(program_cache.SUFFIX)) if directory.exists() else []


def _same(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))  # bit-identical: the same HLO runs


def test_exported_program_matches_traced_and_is_read_back(cache_dir, tier):
    traced = jax.jit(_step)
    for extra in (False, True):
        args = _args(extra=extra)
        want = traced(*args)
        first = CachedProgram(jax.jit(_step), "step", key=("model-a", "float32"))
        got = first(*args)
        assert type(got) is Out
        _same(got, want)
        again = CachedProgram(jax.jit(_step), "step", key=("model-a", "float32"))  # a "new process"
        got2 = again(*args)
        assert type(got2) is Out
        _same(got2, want)
        assert (first.stats.exported, _read_back(again.stats, tier), again.stats.exported) == (1, 1, 0)
    assert len(_files(cache_dir)) == 2  # one per signature (extra=None and extra=array)
    executables = [p for p in os.listdir(cache_dir) if p.endswith(program_cache.EXECUTABLE_SUFFIX)]
    assert len(executables) == (2 if tier == "executable" else 0)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w", "b"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Weights:
    w: np.ndarray
    b: np.ndarray


def test_custom_pytree_inputs(cache_dir, tier):
    params, x, _, scale = _args()
    weights = Weights(params["w"], params["b"])

    def fn(wts, x, scale):
        return jnp.tanh(x @ wts.w + wts.b) * scale, jnp.sum(x)

    want = jax.jit(fn)(weights, x, scale)
    _same(CachedProgram(jax.jit(fn), "dc", key="a")(weights, x, scale), want)
    again = CachedProgram(jax.jit(fn), "dc", key="a")
    _same(again(weights, x, scale), want)
    assert _read_back(again.stats, tier) == 1


def test_key_changes_never_reuse_a_stale_program(cache_dir, monkeypatch, tier):
    args = _args()
    CachedProgram(jax.jit(_step), "step", key="config-1")(*args)
    # Another model config: its own file, its own result (not _step's).
    other = CachedProgram(jax.jit(_other_step), "step", key="config-2")
    _same(other(*args), jax.jit(_other_step)(*args))
    assert other.stats.exported == 1 and other.stats.loaded == 0 and other.stats.executables == 0
    # Another dtype: another signature.
    half = _args(dtype=jnp.bfloat16)
    p16 = CachedProgram(jax.jit(_step), "step", key="config-1")
    _same(p16(*half), jax.jit(_step)(*half))
    assert p16.stats.exported == 1
    # Another jax version / backend / source code: the environment is part of the key.
    env = dict(program_cache.keys.environment())
    env["code"] = "edited"
    monkeypatch.setattr(program_cache.keys, "environment", lambda: tuple(sorted(env.items())))
    edited = CachedProgram(jax.jit(_other_step), "step", key="config-1")
    _same(edited(*args), jax.jit(_other_step)(*args))
    assert edited.stats.exported == 1 and edited.stats.loaded == 0 and edited.stats.executables == 0
    assert len(_files(cache_dir)) == 4


def _tier_files(directory, tier):
    suffix = program_cache.EXECUTABLE_SUFFIX if tier == "executable" else program_cache.SUFFIX
    return sorted(directory / p for p in os.listdir(directory) if p.endswith(suffix))


def test_corrupt_or_foreign_file_is_ignored_with_a_warning(cache_dir, caplog, tier):
    args = _args()
    want = jax.jit(_step)(*args)
    CachedProgram(jax.jit(_step), "step", key="a")(*args)
    (path,) = _tier_files(cache_dir, tier)
    good = path.read_bytes()
    for bad in (b"garbage", good[: len(good) // 2], good[:40] + b"x" * 20 + good[60:]):
        path.write_bytes(bad)
        fresh = CachedProgram(jax.jit(_step), "step", key="a")
        with caplog.at_level(logging.WARNING, logger="whisper_t5x.program_cache"):
            caplog.clear()
            _same(fresh(*args), want)
        assert "ignoring program cache file" in caplog.text
        assert fresh.stats.failures == 1
        if tier == "export":
            assert fresh.stats.exported == 1  # traced again and rewritten
        else:
            assert fresh.stats.loaded == 1  # compiled again from the exported program, and rewritten
        assert path.stat().st_size > 100
    # A valid file of another program, copied under this one's name: its key is checked, not trusted.
    CachedProgram(jax.jit(_other_step), "step", key="b")(*args)
    other_path = [p for p in _tier_files(cache_dir, tier) if p != path][0]
    path.write_bytes(other_path.read_bytes())
    fresh = CachedProgram(jax.jit(_step), "step", key="a")
    with caplog.at_level(logging.WARNING, logger="whisper_t5x.program_cache"):
        caplog.clear()
        _same(fresh(*args), want)
    assert "another program" in caplog.text


@pytest.mark.parametrize("env", [(program_cache.ENV_PROGRAMS, "off"), (compile_cache.ENV_DIR, "off"),
                                 (compile_cache.ENV_DISABLE, "1")])
def test_off_switches(cache_dir, monkeypatch, env):
    monkeypatch.setenv(*env)
    args = _args()
    calls = []

    def counted(*a):
        calls.append(1)
        return jax.jit(_step)(*a)

    prog = CachedProgram(counted, "step", key="a")
    _same(prog(*args), jax.jit(_step)(*args))
    assert calls == [1] and prog.stats.bypassed == 1 and _files(cache_dir) == []


def test_no_compile_cache_means_no_program_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "compile_cache_dir", lambda: None)
    assert program_cache.program_cache_dir() is None


def test_unexportable_function_falls_back_to_tracing(cache_dir, caplog):
    def with_callback(params, x, extra, scale):
        y = jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return Out(jnp.sum(y, -1), y)

    args = _args()
    prog = CachedProgram(jax.jit(with_callback), "cb", key="a")
    with caplog.at_level(logging.WARNING, logger="whisper_t5x.program_cache"):
        out = prog(*args)
        out2 = prog(*args)
    np.testing.assert_allclose(np.asarray(out.scaled), 2 * args[1])
    _same(out, out2)
    assert "cannot be exported" in caplog.text and prog.stats.bypassed == 2 and _files(cache_dir) == []


def test_sharded_arguments_are_left_alone(cache_dir):
    if len(jax.devices()) < 2:
        pytest.skip("needs two devices")
    mesh = jax.make_mesh((2,), ("data",))
    x = jax.device_put(np.ones((2, 4), np.float32), jax.sharding.NamedSharding(mesh, jax.P("data")))
    params, _, extra, scale = _args()
    prog = CachedProgram(jax.jit(_step), "step", key="a")
    prog(params, x, extra, scale)
    assert prog.stats.bypassed == 1 and _files(cache_dir) == []


def test_inside_another_trace_is_left_alone(cache_dir):
    inner = CachedProgram(jax.jit(_step), "step", key="a")
    args = _args()
    out = jax.jit(lambda *a: inner(*a).total)(*args)
    _same(out, jax.jit(_step)(*args).total)
    assert inner.stats.bypassed == 1 and _files(cache_dir) == []


def test_donated_arguments_stay_donated(cache_dir, tier):
    def update(state, x):
        return {"a": state["a"] + x, "b": state["b"] * 2.0}, jnp.sum(x)

    def fresh():
        return {"a": jnp.ones((8,)), "b": jnp.full((8,), 3.0)}

    x = jnp.arange(8.0)
    want_state = jax.jit(update)(fresh(), x)
    for attempt in range(2):  # exported, then read back
        prog = CachedProgram(jax.jit(update, donate_argnums=(0,)), "upd", key="a", donate_argnums=(0,))
        state = fresh()
        got = prog(state, x)
        _same(got, want_state)
        assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state))  # donated
        assert not x.is_deleted()
    assert _read_back(prog.stats, tier) == 1


def test_cached_shapes(cache_dir, caplog):
    calls = []

    def shapes(width):
        def fn():
            calls.append(width)
            init = lambda: {"dense": {"kernel": jnp.zeros((4, width)), "bias": jnp.zeros((width,), jnp.bfloat16)}}
            return jax.eval_shape(init)
        return fn

    want = shapes(3)()
    assert program_cache.cached_shapes(shapes(3), "params", key="w3") == want
    assert program_cache.cached_shapes(shapes(3), "params", key="w3") == want
    assert calls == [3, 3]  # the reference, then computed once; the third call read the file
    assert program_cache.cached_shapes(shapes(5), "params", key="w5")["dense"]["kernel"].shape == (4, 5)
    assert calls == [3, 3, 5]
    (path,) = [p for p in cache_dir.iterdir() if p.name.endswith(".shapes.json") and "'w3'" in p.read_text()]
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="whisper_t5x.program_cache"):
        assert program_cache.cached_shapes(shapes(3), "params", key="w3") == want
    assert "ignoring shape cache file" in caplog.text and calls[-1] == 3


def test_folder_kept_under_its_size_limit(cache_dir, monkeypatch):
    args = _args()
    CachedProgram(jax.jit(_step), "step", key="old")(*args)
    old = set(os.listdir(cache_dir))
    os.utime(cache_dir / sorted(old)[0], (1, 1))  # the least recently used
    monkeypatch.setenv(program_cache.ENV_MAX_MB, str(0.5 * sum(os.path.getsize(cache_dir / f) for f in old) / 2**20))
    CachedProgram(jax.jit(_other_step), "step", key="new")(*args)
    left = set(os.listdir(cache_dir))
    assert sorted(old)[0] not in left and left - old  # the oldest went, the new files stayed


def test_prefetch_loads_what_the_last_process_used(cache_dir, monkeypatch):
    import atexit

    monkeypatch.setattr(atexit, "register", lambda fn: fn)
    monkeypatch.setenv(program_cache.ENV_PROGRAMS, "executables")
    monkeypatch.setattr(program_cache.recent, "_session", {})
    monkeypatch.setattr(program_cache.recent, "_prefetched", {})
    args = _args()
    want = jax.jit(_step)(*args)
    assert program_cache.prefetch("base|float32") == 0  # nothing known yet
    CachedProgram(jax.jit(_step), "step", key="a")(*args)
    program_cache.recent.save_session()  # what the process does at exit
    # the next process
    monkeypatch.setattr(program_cache.recent, "_session", {})
    monkeypatch.setattr(program_cache.recent, "_prefetched", {})
    assert program_cache.prefetch("base|float32") == 1
    prog = CachedProgram(jax.jit(_step), "step", key="a")
    _same(prog(*args), want)
    assert (prog.stats.prefetched, prog.stats.executables) == (1, 1)
    # a listed file whose key is not the caller's is never used (another model under the same tag)
    monkeypatch.setattr(program_cache.recent, "_session", {})
    monkeypatch.setattr(program_cache.recent, "_prefetched", {})
    assert program_cache.prefetch("base|float32") == 1
    (listed,) = program_cache.recent._prefetched
    other = CachedProgram(jax.jit(_other_step), "step", key="b")
    monkeypatch.setattr(other, "path_for", lambda directory, key_text: listed[: -len(".jaxexec")] + ".jaxexport")
    _same(other(*args), jax.jit(_other_step)(*args))
    assert other.stats.prefetched == 0
    assert program_cache.prefetch("other tag") == 0


def test_an_executable_that_fails_to_run_is_replaced(cache_dir, caplog, monkeypatch):
    monkeypatch.setenv(program_cache.ENV_PROGRAMS, "executables")
    args = _args()
    want = jax.jit(_step)(*args)
    CachedProgram(jax.jit(_step), "step", key="a")(*args)
    (path,) = _tier_files(cache_dir, "executable")

    def broken(*leaves):
        raise RuntimeError("NOT_FOUND: Function wrapped_broadcast not found")

    monkeypatch.setattr(CachedProgram, "_read_executable", staticmethod(lambda p, k: broken))
    fresh = CachedProgram(jax.jit(_step), "step", key="a")
    with caplog.at_level(logging.WARNING, logger="whisper_t5x.program_cache"):
        _same(fresh(*args), want)
        _same(fresh(*args), want)
    assert "failed to run" in caplog.text and not path.exists() and fresh.stats.failures == 1


_COMPILE_CACHE_HIT = """
import sys, jax, numpy as np, jax.numpy as jnp
from whisper_t5x import compile_cache, program_cache
compile_cache.enable_compile_cache(sys.argv[1], enabled=True, min_compile_time_secs=0.0)
prog = program_cache.CachedProgram(jax.jit(lambda x: {"a": jnp.zeros((4, 512, 8)) + x, "b": jnp.full((4,), 3)}),
                                   "fill", key="k")
out = prog(jnp.float32(1.0))
assert float(out["a"].sum()) == 4 * 512 * 8 and int(out["b"].sum()) == 12
print(prog.stats)
"""


def test_executable_from_the_compile_cache_is_not_kept(tmp_path):
    """jaxlib 0.10 re-serializes an executable read from its compile cache without its kernels, so the
    program cache keeps only executables it compiled itself (the second process below would otherwise
    write a file that fails to run in the third)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_T5X")}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")

    def run(mode):
        return subprocess.run([sys.executable, "-c", _COMPILE_CACHE_HIT, str(tmp_path / "jax")], env=dict(
            env, WHISPER_T5X_PROGRAM_CACHE=mode), capture_output=True, text=True, timeout=120)

    first = run("export")  # the exported program compiled and put in JAX's compile cache
    assert first.returncode == 0, first.stderr
    second = run("executables")  # its executable now comes from the compile cache: not written
    assert second.returncode == 0, second.stderr
    programs = tmp_path / "jax" / "programs"
    assert [p for p in os.listdir(programs) if p.endswith(program_cache.EXECUTABLE_SUFFIX)] == []
    third = run("executables")
    assert third.returncode == 0, third.stderr
