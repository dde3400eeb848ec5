"""The slot engine (whisper_t5x.longform.engine, decoding.slots, decoding.slot_generate).

* the model-free slot loop against the greedy loop, rows entering at different times;
* the engine's host loop (refill, fallback re-queue, best attempt) on a scripted fake device;
* a random-init Whisper whose rows end at different lengths: every row's tokens through refilled
  slots equal decoding it alone; the compiled-program count is bounded;
* real tiny.en VAD rows: the pipeline's text with the engine equals the Decoder's.
"""

import collections
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._speech import LONG_TEXT, needs_espeak, synthesize
from whisper_t5x.decoding.greedy import greedy_search
from whisper_t5x.decoding.rules_state import LogitRules
from whisper_t5x.decoding.slots import empty_slots, put_rows, slot_steps
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.decoder import DecodeRequest
from whisper_t5x.longform.engine import Engine, EngineError, LiveRows
from whisper_t5x.model.config import SpecialTokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------- the slot loop, no model
V, EOT, SOT = 5, 3, 4  # text tokens 0..2


def _markov_step(table):
    table = jnp.asarray(table)

    def step(tokens, cache, position):
        del position
        last = tokens[:, -1]
        return table[cache, last], last  # cache: each row's previous token

    return step


def test_slot_loop_equals_greedy_for_rows_entering_at_different_times():
    table = np.random.RandomState(3).randn(V, V, V).astype(np.float32) * 2
    rules = LogitRules(eot=EOT, timestamp_begin=V, suppress_tokens=(SOT,), begin_suppress_tokens=(EOT,))
    step, max_len, firsts = _markov_step(table), 12, [0, 1, 2, 1, 0]
    ref = []
    for f in firsts:  # each row alone
        seq = jnp.asarray([[SOT, f] + [EOT] * (max_len - 2)], jnp.int32)
        out = greedy_search(step, seq, jnp.asarray(table[SOT, f])[None], jnp.asarray([f]), 2, rules)
        ref.append((np.asarray(out.sequences)[0].tolist(), float(out.sum_logprob[0]), int(out.num_tokens[0])))
    assert len({tuple(r[0]) for r in ref}) > 2  # rows differ (and end at different lengths)

    def insert(state, rows, slot_ids):
        seq = np.full((len(rows), max_len), EOT, np.int32)
        seq[:, 0], seq[:, 1] = SOT, [firsts[r] for r in rows]
        first = np.asarray([firsts[r] for r in rows])
        put = lambda c, ids, new: c.at[ids].set(new, mode="drop")  # noqa: E731
        return put_rows(state, jnp.asarray(slot_ids), jnp.asarray(seq), jnp.asarray(first),
                        jnp.asarray(table[SOT, first]), 2, jnp.zeros(len(rows)), jnp.zeros((len(rows), 2), jnp.uint32),
                        put)

    state = empty_slots(2, max_len, V, jnp.zeros((2,), jnp.int32), EOT)
    state = insert(state, [0, 1], [0, 1])
    got, waiting = {}, [2, 3, 4]
    occupant = {0: 0, 1: 1}
    run = jax.jit(lambda st, stop_below: slot_steps(step, st, rules, 3, stop_below))  # one compile
    while occupant:
        state, stats = run(state, len(occupant) - 1)
        assert int(stats.steps) <= 3
        for s, r in list(occupant.items()):
            if bool(state.done[s]):
                got[r] = (np.asarray(state.seq[s]).tolist(), float(state.sum_logprob[s]), int(state.num_tokens[s]))
                del occupant[s]
                if waiting:
                    nxt = waiting.pop(0)
                    state = insert(state, [nxt], [s])
                    occupant[s] = nxt
    for r, (seq, logp, n) in enumerate(ref):
        assert got[r][0] == seq and got[r][2] == n, r
        assert got[r][1] == pytest.approx(logp, abs=1e-5)


# ---------------------------------------------------------------------- the host loop on a fake device
SPECIAL = SpecialTokens.for_vocab_size(51864)  # English-only: sot, notimestamps, then text


class _Tokenizer:
    def decode(self, ids):
        return "".join(f" w{t}" for t in ids)


class FakeEngine(Engine):
    """Slots as numpy arrays; a row (its id in ``features[0, 0]``) emits the scripted tokens of
    ``table[(row, temperature, draw)]`` (or ``table[(row, temperature)]``) one per step."""

    MAX_LEN = 40

    def __init__(self, table, **kw):
        config = types.SimpleNamespace(special_tokens=SPECIAL, is_multilingual=False, max_target_positions=448,
                                       num_mel_bins=2)

        def decode_options(**kwargs):
            from whisper_t5x.decoding.generate import DecodeOptions

            return DecodeOptions(task=None, return_timestamps=False, max_length=kwargs.get("max_length") or self.MAX_LEN,
                                 prompt_length=kwargs.get("prompt_length", 0))

        model = types.SimpleNamespace(module=None, config=config, tokenizer=_Tokenizer(),
                                      decode_options=decode_options)
        super().__init__(model, **kw)
        self.table, self.inserted, self.widths = table, [], []
        self.on_generate = None  # called with (generate calls so far, state) before each

    def _allocate(self, options, capacity):
        self._program(("allocate", options, capacity), lambda: None)
        s = capacity
        return dict(seq=np.full((s, self.MAX_LEN), EOT_E, np.int32), index=np.zeros(s, np.int64),
                    done=np.ones(s, bool), script=[None] * s, avg=np.zeros(s))

    def _insert_fn(self, options, capacity, rows, audio, **_):
        def run(params, state, feats, ids, temps, draw_ids, seed):
            for f, s, t, d in zip(np.asarray(feats), np.asarray(ids), np.asarray(temps), np.asarray(draw_ids)):
                if s >= capacity:
                    continue
                row, t = int(f[0, 0]), round(float(t), 3)
                toks, avg = self.table.get((row, t, int(d) % 3), self.table.get((row, t)))
                self.inserted.append((row, t))
                state["script"][s] = list(toks) + [EOT_E]
                state["seq"][s] = EOT_E
                state["seq"][s, :2] = [SPECIAL.sot, SPECIAL.no_timestamps]
                state["index"][s], state["done"][s], state["avg"][s] = 2, False, avg
            return state

        return self._program(("insert", options, capacity, rows, "mel"), lambda: run)

    def _move_fn(self, options, capacity, **_):
        def run(state, source, target, count):
            for s, t in list(zip(np.asarray(source), np.asarray(target)))[:int(count)]:
                assert state["done"][t] and s != t  # a move overwrites a free slot only
                for k, v in state.items():
                    v[t] = v[s] if k != "script" else list(v[s])
                state["done"][s] = True
            return state

        return self._program(("move", options, capacity), lambda: run)

    def _generate_fn(self, options, capacity, span, width, **_):
        self.widths.append(width)

        def run(params, state, steps, stop_below):
            if self.on_generate is not None:
                self.on_generate(len(self.widths), state)
            n = useful = 0
            while n < int(steps) and (~state["done"]).sum() > int(stop_below):
                for s in np.nonzero(~state["done"][:width])[0]:
                    tok = state["script"][s][state["index"][s] - 2]
                    state["seq"][s, state["index"][s]] = tok
                    state["index"][s] += 1
                    state["done"][s] = tok == EOT_E
                    useful += 1
                n += 1
            num = np.asarray([max(0, i - 3) for i in state["index"]])
            report = types.SimpleNamespace(
                seq=state["seq"].copy(), index=state["index"].copy(), done=state["done"].copy(),
                sum_logprob=state["avg"] * (num + 1), num_tokens=num, no_speech_prob=np.zeros(capacity),
                language=np.full(capacity, SPECIAL.first_language),
                stats=types.SimpleNamespace(steps=n, live_slot_steps=useful))
            return state, report

        return self._program(("generate", options, capacity, span, width), lambda: run)


EOT_E = SPECIAL.eot
REPEAT = [7] * 30  # compression ratio far above 2.4


def _feats(ids):
    return [(i, np.full((2, 3), float(i), np.float32)) for i in ids]


def test_refill_keeps_slots_full_and_every_row_ends_once(monkeypatch):
    monkeypatch.setattr(jax, "device_get", lambda x: x)
    lengths = [2, 2, 2, 30, 3, 4, 2, 5, 3, 1, 6]  # row 3 outlives the rest in the last slot
    table = {(i, 0.0): ([100 + i] * n, -0.2) for i, n in enumerate(lengths)}
    eng = FakeEngine(table, slots=4, encode_batch=2, steps_per_call=100)
    greedy = DecodeRequest(task=None, timestamps=False, fallback=fb.FallbackConfig(temperatures=(0.0,)))
    got = eng.decode(None, _feats(range(len(lengths))), greedy)
    assert sorted(got) == list(range(len(lengths)))
    for i, n in enumerate(lengths):
        assert got[i].tokens == tuple([100 + i] * n) and got[i].temperature == 0.0
    assert [r for r, _ in eng.inserted] == list(range(len(lengths)))  # each row decoded once, in order
    st = eng.stats
    assert st["rows"] == len(lengths) and st["engine_live_slot_steps"] == sum(n + 1 for n in lengths)
    # Rows joined while others ran: fewer steps than decoding batches of 4 to their longest row.
    batches = sum(max(lengths[k:k + 4]) + 1 for k in range(0, len(lengths), 4))
    assert st["engine_steps"] < batches
    # At the tail the live slots move to the front and fewer slots step.
    assert st["engine_moves"] >= 1 and eng.widths[-1] == 1 and max(eng.widths) == 4


def test_a_failing_row_reenters_hotter_and_ends():
    cfg = fb.FallbackConfig(temperatures=(0.0, 0.5, 1.0))
    table = {
        (0, 0.0): ([11, 12], -0.1),  # fine at once
        (1, 0.0): (REPEAT, -0.1),  # repeats itself: retried at 0.5, three draws, the likeliest passes
        (1, 0.5, 0): ([21], -0.9), (1, 0.5, 1): ([22], -0.3), (1, 0.5, 2): ([23], -0.95),
        (2, 0.0): ([31], -3.0),  # unsure at every temperature: ends with its best attempt
        (2, 0.5): ([32], -2.0), (2, 1.0): ([33], -2.5),
        (3, 0.0): ([41, 42, 43], -0.2),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax, "device_get", lambda x: x)
        eng = FakeEngine(table, slots=2, encode_batch=2)
        got = eng.decode(None, _feats(range(4)), DecodeRequest(task=None, timestamps=False, fallback=cfg, best_of=3))
    assert got[0].tokens == (11, 12) and got[3].tokens == (41, 42, 43)
    assert got[1].tokens == (22,) and got[1].temperature == 0.5
    assert got[2].tokens == (32,) and got[2].temperature == 0.5  # best of the failed attempts
    inserted = collections.Counter(eng.inserted)
    assert inserted[(1, 0.0)] == 1 and inserted[(1, 0.5)] == 3 and (1, 1.0) not in inserted
    assert inserted[(2, 0.5)] == 3 and inserted[(2, 1.0)] == 3
    assert eng.stats["fallback_decodes"] == 9 and eng.stats["rows"] == 4


@pytest.mark.parametrize("fit", [False, True])
def test_a_few_rows_step_a_few_slots(fit):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax, "device_get", lambda x: x)
        eng = FakeEngine({(0, 0.0): ([5], -0.1), (1, 0.0): ([6, 7], -0.1)}, slots=8, encode_batch=8)
        eng.fit_slots = fit
        greedy = DecodeRequest(task=None, timestamps=False, fallback=fb.FallbackConfig(temperatures=(0.0,)))
        got = eng.decode(None, _feats([0, 1]), greedy)
        assert eng.decode(None, [], greedy) == {}  # no rows: nothing allocated or run
    assert got[0].tokens == (5,) and got[1].tokens == (6, 7)
    # Default: every call allocates all the slots (one set of programs for every input length); fit_slots:
    # only what the rows fill. Either way the two rows step two slots, not eight.
    assert {k[0]: k[1] for k in eng.program_keys()}["allocate"] == (2 if fit else 8)
    assert max(eng.widths) == 2


def test_rows_arriving_while_others_decode_join_at_the_next_refill():
    table = {(0, 0.0): ([1] * 20, -0.1), (1, 0.0): ([2] * 20, -0.1), (2, 0.0): ([3, 4], -0.1)}
    live = LiveRows()
    live.put(0, _feats([0])[0][1])
    live.put(1, _feats([1])[0][1])
    eng = FakeEngine(table, slots=4, encode_batch=2, steps_per_call=5)
    seen = {}

    def arrive(calls, state):
        if calls == 2:  # rows 0 and 1 are 5 steps in: a request arrives
            live.put(2, _feats([2])[0][1])
        if calls == 3:
            seen["live_when_2_runs"] = int((~state["done"]).sum())
            live.close()

    eng.on_generate = arrive
    greedy = DecodeRequest(task=None, timestamps=False, fallback=fb.FallbackConfig(temperatures=(0.0,)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax, "device_get", lambda x: x)
        got = eng.decode(None, live, greedy)
    assert [got[k].tokens for k in range(3)] == [(1,) * 20, (2,) * 20, (3, 4)]
    assert seen["live_when_2_runs"] == 3  # row 2 runs beside rows 0 and 1, which had not ended


def test_requests_it_cannot_take_are_named_errors():
    eng = FakeEngine({}, slots=2)
    assert not eng.supports(DecodeRequest(num_beams=2)) and not eng.supports(DecodeRequest(), prompt=(5, 6))
    # A caller that gives the prompt to decode(); not before a max_length filling the decoder's positions.
    assert eng.supports(DecodeRequest(), prompt=(5, 6), prompted=True)
    assert not eng.supports(DecodeRequest(max_length=448), prompt=(5, 6), prompted=True)
    assert not eng.supports(DecodeRequest(audio_ctx=500)) and not eng.supports(DecodeRequest(alignment_heads=((1, 2),)))
    with pytest.raises(EngineError):
        eng.options(DecodeRequest(num_beams=3))
    with pytest.raises(EngineError):
        Engine(eng.model, slots=0)


# ---------------------------------------------------------------------- random-init Whisper
@pytest.fixture(scope="module")
def eot_model():
    """multilingual-80 with the end-of-text row of the token table scaled up: rows end at 3..44 tokens."""
    from tests import _hf_models as H

    model, params = H.eot_twin("multilingual-80")
    feats = np.stack([H.random_features(1, 80, seed=s)[0] * (0.5 + 0.2 * s) for s in range(8)])
    return model, params, feats


def test_refilled_slots_give_every_row_its_tokens_decoded_alone(eot_model):
    model, params, feats = eot_model
    max_length = 48
    alone = [model.generate(feats[k:k + 1], params=params, language="en", task="transcribe", max_length=max_length)
             for k in range(len(feats))]
    lengths = [int(a.num_tokens[0]) for a in alone]
    assert len(set(lengths)) >= 4 and max(lengths) == max_length - 4 and min(lengths) < 10  # not vacuous
    eng = Engine(model, slots=4, encode_batch=2, steps_per_call=16, tokenizer=_Tokenizer())
    request = DecodeRequest(task="transcribe", language="en", timestamps=False, max_length=max_length,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    got = eng.decode(params, list(enumerate(feats)), request)
    for k, a in enumerate(alone):
        want = np.asarray(a.sequences)[0, 4:].tolist()
        eot = model.config.special_tokens.eot
        want = want[:want.index(eot)] if eot in want else want
        assert list(got[k].tokens) == want, k
        assert got[k].avg_logprob == pytest.approx(float(a.avg_logprob[0]), abs=1e-4)
        assert got[k].language_token == int(a.language_token[0])
    st = eng.stats
    assert st["engine_inserts"] >= 4 and st["rows"] == len(feats)
    assert st["engine_live_slot_steps"] == sum(n + (n < max_length - 4) for n in lengths)
    # Programs: one allocation, an insert per encoder bucket (1, 2), a generate per (cache span, width).
    keys = eng.program_keys()
    assert eng.num_programs == len(keys) <= 1 + 2 + 2 * 3
    again = eng.decode(params, list(enumerate(feats)), request)  # a second call compiles nothing
    assert eng.num_programs == len(keys) and again == got


# ---------------------------------------------------------------------- real tiny.en: VAD rows
@pytest.fixture(scope="module")
def pipes():
    from whisper_t5x import FlaxWhisperPipeline

    # Greedy only: jfk repeated trips the compression fallback (the fake-device tests cover the fallback).
    on = FlaxWhisperPipeline("tiny.en", batch_size=2, decode_slots=4, fallback=False)
    off = FlaxWhisperPipeline((on.model, on.decoder.params), batch_size=2, engine=False, fallback=False)
    return on, off


def test_vad_rows_through_the_engine_give_the_decoders_text(pipes):
    from whisper_t5x.audio.loading import load_audio

    on, off = pipes
    jfk = load_audio(os.path.join(ROOT, "samples", "jfk.flac"))
    # Inputs of one and of two VAD rows (over 30 s of speech), of different lengths.
    gap = np.zeros(16000 * 2, np.float32)
    inputs = [jfk, np.concatenate([jfk[:16000 * 4], gap, jfk, gap, jfk, gap, jfk]), jfk[:16000 * 3]]
    want = off(inputs)
    got = on(inputs)
    assert [g["text"] for g in got] == [w["text"] for w in want]
    assert "ask not what your country" in got[0]["text"].lower()
    assert on.last_stats.get("engine_generate_calls", 0) >= 1
    assert "engine_generate_calls" not in off.last_stats


def test_audio_rows_with_device_features_and_word_alignment(pipes):
    """``feature_backend="jax"``: rows reach the engine as audio and the insert program computes log-mel;
    segment timestamps align the engine's rows word by word."""
    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.audio.loading import load_audio

    on, _ = pipes
    jfk = load_audio(os.path.join(ROOT, "samples", "jfk.flac"))
    dev = FlaxWhisperPipeline((on.model, on.decoder.params), feature_backend="jax", fallback=False)
    ref = FlaxWhisperPipeline((on.model, on.decoder.params), feature_backend="jax", fallback=False, engine=False)
    assert dev(jfk)["text"] == ref(jfk)["text"]
    assert ("insert", dev.engine.slots, 1, "audio") in dev.engine.program_keys()  # (capacity, rows, kind)
    timed = dev(jfk, return_timestamps=True)["chunks"]
    assert len(timed) >= 2 and timed[0]["timestamp"][0] < 1.0 and timed[-1]["timestamp"][1] > 9.0


@pytest.mark.slow
@needs_espeak
def test_two_minutes_of_vad_rows_unchanged_by_the_engine(pipes):
    on, off = pipes
    audio = synthesize(LONG_TEXT)
    assert on(audio)["text"] == off(audio)["text"]


def test_timestamp_rules_run_per_slot(eot_model):
    """Rows with timestamp tokens (chunked windows' rule state: pairs, monotonic) through 2 refilled slots."""
    model, params, feats = eot_model
    feats, max_length = feats[:5], 40
    special = model.config.special_tokens
    eng = Engine(model, slots=2, encode_batch=1, steps_per_call=8, tokenizer=_Tokenizer())
    request = DecodeRequest(task="transcribe", language="en", timestamps=True, max_length=max_length,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    got = eng.decode(params, list(enumerate(feats)), request)
    out = model.generate(feats, params=params, language="en", task="transcribe", max_length=max_length,
                         return_timestamps=True)
    stamps = 0
    for k in range(len(feats)):
        want = np.asarray(out.sequences)[k, 3:].tolist()
        want = want[:want.index(special.eot)] if special.eot in want else want
        assert list(got[k].tokens) == want, k
        stamps += sum(t >= special.timestamp_begin for t in want)
    assert stamps >= len(feats)  # every row starts with a timestamp
