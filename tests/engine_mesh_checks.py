"""The slot engine on a data-parallel mesh of 4 simulated CPU devices, run in a subprocess.

Prints one line ``RESULT <json>``; tests/test_engine_mesh.py asserts on it. The device count must be
fixed before JAX starts, hence the subprocess. ``--pipeline``: also tiny.en VAD rows through a pipeline
with a data-parallel (and a data 2 x model 2) partitioner (slow).
"""

import json
import os
import re
import sys
import warnings

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import partitioning as pt  # noqa: E402
from whisper_t5x.longform import fallback as fb  # noqa: E402
from whisper_t5x.longform.decoder import DecodeRequest  # noqa: E402
from whisper_t5x.longform.engine import Engine, EngineMeshError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LENGTH = 40


class _Tokenizer:
    def decode(self, ids):
        return "".join(f" w{t}" for t in ids)


def _eot_model():
    """multilingual-80 with the end-of-text row scaled up: rows end at different lengths (as in test_engine)."""
    from tests import _hf_models as H

    model, params = H.flax_twin("multilingual-80")
    params = jax.tree_util.tree_map(np.asarray, params)
    params["decoder"]["embed_tokens"]["embedding"] = params["decoder"]["embed_tokens"]["embedding"].copy()
    params["decoder"]["embed_tokens"]["embedding"][model.config.special_tokens.eot] *= 2.6
    feats = np.stack([H.random_features(1, 80, seed=s)[0] * (0.5 + 0.2 * s) for s in range(8)])
    return model, params, feats


def _partitioner(num_partitions=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the odd vocabulary divides nothing: replicated, with a warning
        rules = pt.rules_for("dp" if num_partitions == 1 else "mp")
        return pt.PjitPartitioner(num_partitions=num_partitions, logical_axis_rules=rules)


def _axes(part, model, params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = pt.InferenceState.create({"params": params, "params_axes": model.params_axes})
        return part.get_mesh_axes(state).params


def _rows(got):
    return {str(k): [list(map(int, r.tokens)), round(float(r.avg_logprob), 5), int(r.language_token)]
            for k, r in sorted(got.items())}


def _spec(x):
    out = [list(e) if isinstance(e, tuple) else e for e in x.sharding.spec]
    while out and out[-1] is None:
        out.pop()
    return out


def engine_checks():
    model, params, feats = _eot_model()
    part = _partitioner()
    axes = _axes(part, model, params)
    sharded = part.shard_host_params(params, axes)
    out = {"devices": len(jax.devices()), "mesh": dict(part.mesh.shape)}
    cases = {
        "split": dict(slots=8, encode_batch=4, timestamps=False, prompt=()),  # inserts of 4 rows split over data
        "replicated": dict(slots=4, encode_batch=2, timestamps=False, prompt=()),  # inserts of 1-2 rows: replicated
        "timestamps": dict(slots=4, encode_batch=4, timestamps=True, prompt=()),
        "prompt": dict(slots=8, encode_batch=4, timestamps=False, prompt=(440, 1000, 2000)),
    }
    for name, c in cases.items():
        request = DecodeRequest(task="transcribe", language="en", timestamps=c["timestamps"], max_length=MAX_LENGTH,
                                fallback=fb.FallbackConfig(temperatures=(0.0,)))
        rows = list(enumerate(feats))
        one = Engine(model, slots=c["slots"], encode_batch=c["encode_batch"], steps_per_call=8, tokenizer=_Tokenizer())
        want = one.decode(params, rows, request, prompt=c["prompt"])
        eng = Engine(model, slots=c["slots"], encode_batch=c["encode_batch"], steps_per_call=8, tokenizer=_Tokenizer())
        eng.shard(part, axes)
        eng.keep_slots = True  # keep the state to look at it
        widths = []
        build = eng._generate_fn

        def spy(layout, capacity, span, width, **kw):
            widths.append(width)
            return build(layout, capacity, span, width, **kw)

        eng._generate_fn = spy
        got = eng.decode(sharded, rows, request, prompt=c["prompt"])
        programs = eng.num_programs
        again = eng.decode(sharded, rows, request, prompt=c["prompt"])
        state = eng._state[1]
        cache = jax.tree_util.tree_leaves(state.loop.cache)[0]
        report = dict(
            want=_rows(want), got=_rows(got), again_equal=_rows(again) == _rows(got),
            lengths=sorted({len(r.tokens) for r in want.values()}),
            cache_spec=_spec(cache), cache_shard=list(cache.addressable_shards[0].data.shape),
            cache_shape=list(cache.shape), seq_spec=_spec(state.loop.seq),
            cross_spec=_spec(jax.tree_util.tree_leaves(state.cross_kv)[0]),
            programs=programs, programs_after=eng.num_programs,
            keys=[str(k[0]) + str(k[3:]) for k in eng.program_keys()],
            widths=sorted(set(widths)), inserts=int(eng.stats["engine_inserts"]),
            padding_rows=int(eng.stats["padding_rows"]),
        )
        out[name] = report
    # The generate program moves no slot between devices: what it all-gathers is only small int32 index vectors
    # (the per-slot write positions of its scatters), never the cache, the cross K/V or the logits.
    eng = Engine(model, slots=8, encode_batch=4, steps_per_call=8, tokenizer=_Tokenizer())
    eng.shard(part, axes)
    request = DecodeRequest(task="transcribe", language="en", timestamps=False, max_length=MAX_LENGTH,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    layout = eng.layout(eng.options(request), False)
    state = eng._allocate(layout, 8)
    hlo = {}
    for width in (4, 8):
        fn = eng._generate_fn(layout, 8, MAX_LENGTH, width, params=sharded, state=state)
        text = fn.jitted.lower(sharded, state, jnp.int32(8), jnp.int32(0)).compile().as_text()
        gathered = re.findall(r"= (\w+)\[([0-9,]*)\]\S* all-gather\(", text)
        hlo[str(width)] = dict(all_gather=[[t, [int(d) for d in dims.split(",") if d]] for t, dims in gathered],
                               all_to_all=text.count("all-to-all("), permute=text.count("collective-permute("))
    out["generate_collectives"] = hlo
    # Model parallel (data 2 x model 2, the "mp" rules): heads of the caches over "model".
    part = _partitioner(2)
    axes = _axes(part, model, params)
    request = DecodeRequest(task="transcribe", language="en", timestamps=False, max_length=MAX_LENGTH,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    rows = list(enumerate(feats))
    one = Engine(model, slots=4, encode_batch=2, steps_per_call=8, tokenizer=_Tokenizer())
    want = one.decode(params, rows, request)
    eng = Engine(model, slots=4, encode_batch=2, steps_per_call=8, tokenizer=_Tokenizer())
    eng.shard(part, axes)
    eng.keep_slots = True
    got = eng.decode(part.shard_host_params(params, axes), rows, request)
    cache = jax.tree_util.tree_leaves(eng._state[1].loop.cache)[0]
    cross = jax.tree_util.tree_leaves(eng._state[1].cross_kv)[0]
    out["mp"] = dict(mesh=dict(part.mesh.shape), want=_rows(want), got=_rows(got), cache_spec=_spec(cache),
                     cross_spec=_spec(cross), cache_shard=list(cache.addressable_shards[0].data.shape),
                     cache_shape=list(cache.shape))
    try:
        Engine(model, slots=6).shard(_partitioner(), axes)
        out["uneven"] = "accepted"
    except EngineMeshError as e:
        out["uneven"] = f"EngineMeshError: {e}"
    return out


def pipeline_checks():
    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.audio.loading import load_audio

    one = FlaxWhisperPipeline("tiny.en", batch_size=4, fallback=False, compile_cache=False)
    dp = FlaxWhisperPipeline((one.model, one.decoder.params), batch_size=4, fallback=False, compile_cache=False,
                             partitioner=_partitioner())
    jfk = load_audio(os.path.join(ROOT, "samples", "jfk.flac"))
    gap = np.zeros(16000 * 2, np.float32)
    inputs = [jfk, np.concatenate([jfk[:16000 * 4], gap, jfk, gap, jfk, gap, jfk]), jfk[:16000 * 3]]
    want = [r["text"] for r in one(inputs)]
    got = [r["text"] for r in dp(inputs)]
    chunked_want = [r["text"] for r in one(inputs, long_form="chunked")]
    chunked_got = [r["text"] for r in dp(inputs, long_form="chunked")]
    mp = FlaxWhisperPipeline((one.model, one.decoder.params), batch_size=4, fallback=False, compile_cache=False,
                             partitioner=_partitioner(2))
    mp_text = mp(inputs)
    return dict(vad_equal=got == want, vad_text=got[0], chunked_equal=chunked_got == chunked_want,
                engine_calls=int(dp.last_stats.get("engine_generate_calls", 0)),
                active=dp.active_engine is dp.engine and dp.engine.data_size == 4,
                mp_active=mp.active_engine is mp.engine and mp.engine.data_size == 2,
                mp_equal=[r["text"] for r in mp_text] == want,
                mp_engine_calls=int(mp.last_stats.get("engine_generate_calls", 0)))


def main():
    out = engine_checks()
    if "--pipeline" in sys.argv:
        out["pipeline"] = pipeline_checks()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
