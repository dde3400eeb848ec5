"""benchmarks/gpu.py: fixed-length decoding of random-init models, the report's arithmetic, the CPU smoke run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu  # noqa: E402

from whisper_t5x.decoding.generate import generate  # noqa: E402
from whisper_t5x.model.config import WhisperConfig  # noqa: E402
from whisper_t5x.model.whisper import WhisperModule  # noqa: E402

TINY = WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, decoder_layers=1,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     max_source_positions=20, max_target_positions=64)


def _eot_loving_params(config):
    """Random params whose every decoder output is end-of-text: greedy stops at once unless suppressed."""
    params, _ = gpu.random_params(config, jnp.float32)
    params = jax.tree_util.tree_map(lambda x: x, params)
    d = params["decoder"]
    bias = jax.random.normal(jax.random.PRNGKey(3), (config.d_model,))
    d["layer_norm"]["scale"] = jnp.zeros_like(d["layer_norm"]["scale"])
    d["layer_norm"]["bias"] = bias
    eot = config.special_tokens.eot
    d["embed_tokens"]["embedding"] = d["embed_tokens"]["embedding"].at[eot].set(10 * bias)
    return params


def test_random_params_have_the_models_tree_and_unit_norm_scales():
    params, count = gpu.random_params(TINY, jnp.bfloat16)
    shapes = jax.eval_shape(WhisperModule(TINY).init, jax.random.PRNGKey(0), jnp.zeros((1, 80, 40)),
                            jnp.zeros((1, 4), jnp.int32))["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    assert count == sum(x.size for x in jax.tree_util.tree_leaves(shapes))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    assert np.all(np.asarray(params["encoder"]["layer_norm"]["scale"], np.float32) == 1)
    kernel = np.asarray(params["encoder"]["layers"]["0"]["fc1"]["kernel"], np.float32)
    assert 0.01 < kernel.std() < 0.03


def test_fixed_length_decoding_runs_every_step_even_when_the_model_wants_to_stop():
    params = _eot_loving_params(TINY)
    features = jax.random.normal(jax.random.PRNGKey(1), (2, 80, TINY.num_frames))
    module = WhisperModule(TINY)
    options, steps = gpu.fixed_length_options(TINY, 7)
    assert steps == 8 and options.max_length == 1 + 3 + steps
    out = generate(module, params, features, options)
    assert np.asarray(out.num_tokens).tolist() == [steps, steps]
    assert TINY.special_tokens.eot not in np.asarray(out.sequences)[:, 4:]
    # The same params without the suppression stop at the first sampled token.
    free = options.__class__(**{**options.__dict__, "suppress_tokens": ()})
    assert np.asarray(generate(module, params, features, free).num_tokens).tolist() == [0, 0]


def test_decode_figures_subtract_the_encoder_of_the_same_model_and_batch():
    rows = [dict(model="base", batch=32, command_buffers=False, generate_s=1.0, encoder_s=0.2, loop_steps=100),
            dict(model="base", batch=32, command_buffers=True, generate_s=0.6, loop_steps=100),
            dict(model="turbo", batch=8, command_buffers=True, skipped="time budget: 3 s left")]
    off, on, skipped = gpu.derive(rows)
    assert off["decode_steps_per_s"] == pytest.approx(125.0) and off["step_ms"] == pytest.approx(8.0)
    assert off["decode_tokens_per_s"] == pytest.approx(4000) and off["encoder_windows_per_s"] == 160.0
    assert on["encoder_s_used"] == 0.2 and on["decode_steps_per_s"] == pytest.approx(250.0)
    assert "decode_s" not in skipped
    table = gpu.render(dict(meta=dict(decode_tokens=99), rows=rows, skipped=[], notes=["n1"]))
    assert "| base | 32 | yes |" in table and "skipped: time budget" in table and "- n1" in table


def test_step_bytes_counts_weights_cross_kv_and_cache():
    cfg = WhisperConfig.for_architecture("large-v3")
    one, two = gpu.step_bytes(cfg, 1, 100), gpu.step_bytes(cfg, 2, 100)
    per_row = two - one
    assert per_row == 2 * 32 * 2 * (1500 + 100) * 1280  # bf16 K and V per layer, frames + cache positions
    assert 1.5e9 < one - per_row < 2.0e9  # decoder weights in bf16 (~0.9 B parameters)


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    """The GPU script's whole path on CPU (both XLA flag variants, cuDNN falling back to xla): ~2 min."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--smoke", "--attention", "cudnn",
           "--out", str(tmp_path), "--repeats", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.load(open(tmp_path / "gpu.json"))
    rows = report["rows"]
    assert [r["command_buffers"] for r in rows] == [False, True]
    assert all(r["fixed_length_ok"] and r["finite_logprob"] and r["attention_impl"] == "xla" for r in rows)
    assert gpu.COMMAND_BUFFER_FLAG in rows[1]["xla_flags"]
    assert "fell back to xla" in (tmp_path / "gpu.md").read_text()
