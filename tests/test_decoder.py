"""The Decoder alone (whisper_t5x.longform.decoder), on a fake compiled program: no model, no JAX compile.

The fake program answers each row from a table keyed by (row id, temperature): row ids are written
into the features, so padding, regrouping and re-decoding of failing rows are all visible.
"""

import dataclasses
import types

import numpy as np
import pytest

from whisper_t5x.decoding.generate import DecodeOptions, GenerateOutput
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.decoder import Decoder, DecodeRequest, Row, trim_prompt
from whisper_t5x.model.config import SpecialTokens

SPECIAL = SpecialTokens.for_vocab_size(51864)  # English-only layout: no forced language/task tokens
EOT = SPECIAL.eot
MAX_LEN = 72


class _Tokenizer:
    def decode(self, ids):
        return "".join(f" w{t}" for t in ids)


def _model():
    config = types.SimpleNamespace(special_tokens=SPECIAL, is_multilingual=False, max_target_positions=448,
                                   num_mel_bins=2)

    def decode_options(task=None, language=None, return_timestamps=False, max_length=None, num_beams=1,
                       length_penalty=None, prompt_length=0, sample=False, suppress_tokens=None,
                       begin_suppress_tokens=None):
        return DecodeOptions(task=task, return_timestamps=return_timestamps, max_length=MAX_LEN,
                             prompt_length=prompt_length, num_beams=num_beams, sample=sample)

    return types.SimpleNamespace(config=config, tokenizer=_Tokenizer(), decode_options=decode_options, module=None)


class FakeDecoder(Decoder):
    """Answers from ``table[(row_id, temperature)] = (text tokens, avg_logprob, no_speech_prob)``."""

    def __init__(self, table, batch_size=4):
        super().__init__(_model(), params=None, batch_size=batch_size)
        self.table = table
        self.calls = []

    def program(self, options):
        def run(params, features, prompt, temperature, rng):
            features = np.asarray(features)
            ids = [int(round(float(r[0, 0]))) for r in features]
            t = round(float(temperature), 3)
            self.calls.append(dict(ids=ids, temperature=t, sample=options.sample,
                                   prompt=None if prompt is None else np.asarray(prompt).tolist()))
            seqs = np.full((len(ids), MAX_LEN), EOT, np.int32)
            seqs[:, 0] = SPECIAL.sot
            seqs[:, 1] = SPECIAL.no_timestamps
            logp, nsp = [], []
            for j, i in enumerate(ids):
                toks, lp, ns = self.table[(i, t)]
                seqs[j, 2:2 + len(toks)] = toks
                logp.append(lp)
                nsp.append(ns)
            n = len(ids)
            return GenerateOutput(seqs, np.zeros(n), np.asarray(logp, np.float32), np.zeros(n, np.int32),
                                  np.asarray(nsp, np.float32), np.full(n, SPECIAL.first_language, np.int32),
                                  np.ones(n))

        return run


def _rows(ids, prompt=()):
    return [Row(np.full((2, 3), float(i), np.float32), tuple(prompt)) for i in ids]


REPETITIVE = [7] * 60  # compression ratio far above 2.4
REQUEST = DecodeRequest(task=None, timestamps=False, fallback=fb.FallbackConfig(temperatures=(0.0, 0.5, 1.0)))


def test_only_failing_rows_are_decoded_again_and_padding_is_dropped():
    table = {(0, 0.0): ([11, 12], -0.2, 0.0), (1, 0.0): ([13], -2.0, 0.0), (2, 0.0): ([14], -0.1, 0.0),
             (1, 0.5): ([15, 16], -0.3, 0.0)}
    dec = FakeDecoder(table)
    out = dec.decode(_rows([0, 1, 2]), dataclasses.replace(REQUEST, best_of=1))
    assert [r.tokens for r in out] == [(11, 12), (15, 16), (14,)]
    assert [r.temperature for r in out] == [0.0, 0.5, 0.0]
    # 3 rows padded to a bucket of 4 (last row repeated); the retry is row 1 alone.
    assert dec.calls[0]["ids"] == [0, 1, 2, 2] and dec.calls[1]["ids"] == [1] and dec.calls[1]["temperature"] == 0.5
    assert not any(c["sample"] for c in dec.calls)  # greedy and sampling share one compiled program
    assert dec.stats["fallback_decodes"] == 1 and dec.stats["padding_rows"] == 1
    # best_of=5 (the default, as openai-whisper's and faster-whisper's): five draws of row 1 at 0.5.
    dec = FakeDecoder(table)
    dec.decode(_rows([0, 1, 2]), REQUEST)
    assert [c["ids"] for c in dec.calls[1:]] == [[1, 1, 1, 1], [1]] and dec.stats["fallback_decodes"] == 5


def test_hot_fallback_draws_drop_the_prompt():
    table = {(0, 0.0): (REPETITIVE, -0.1, 0.0), (0, 0.5): (REPETITIVE, -0.1, 0.0), (0, 1.0): ([21], -0.2, 0.0)}
    dec = FakeDecoder(table)
    [row] = dec.decode(_rows([0], prompt=[5, 6, 7]), dataclasses.replace(REQUEST, best_of=1))
    assert row.tokens == (21,)
    assert [(c["temperature"], c["prompt"] is not None) for c in dec.calls] == [(0.0, True), (0.5, True), (1.0, False)]


def test_when_every_temperature_fails_the_best_attempt_is_kept():
    """One policy for every mode: faster-whisper's (best by log-prob, non-repetitive first), not openai's last."""
    table = {(0, 0.0): (REPETITIVE, -0.1, 0.0), (0, 0.5): ([21, 22], -1.5, 0.0), (0, 1.0): ([23], -3.0, 0.0)}
    [row] = FakeDecoder(table).decode(_rows([0]), dataclasses.replace(REQUEST, best_of=1))
    assert row.tokens == (21, 22) and row.temperature == 0.5  # openai-whisper would keep the T=1.0 attempt


def test_silence_uses_no_speech_alone_without_a_logprob_threshold():
    """The one silence test (fallback.is_silent), shared by chunked, VAD and sequential decoding."""
    table = {(0, 0.0): ([31], -0.2, 0.9), (1, 0.0): ([32], -1.5, 0.9), (2, 0.0): ([33], -0.2, 0.1)}
    with_threshold = FakeDecoder(table).decode(_rows([0, 1, 2]), REQUEST)
    assert [r.silent for r in with_threshold] == [False, True, False]  # confident text despite no-speech survives
    assert with_threshold[1].tokens == () and with_threshold[1].text == ""
    no_logprob = DecodeRequest(task=None, timestamps=False,
                               fallback=fb.FallbackConfig(temperatures=(0.0,), logprob_threshold=None))
    out = FakeDecoder(table).decode(_rows([0, 1, 2]), no_logprob)
    assert [r.silent for r in out] == [True, True, False]
    assert fb.is_silent(-0.2, 0.9, no_logprob.fallback) and not fb.is_silent(-0.2, 0.1, no_logprob.fallback)


def test_prompts_are_trimmed_and_bucketed_so_lengths_compile_a_bounded_set():
    table = {(i, 0.0): ([40 + i], -0.1, 0.0) for i in range(3)}
    dec = FakeDecoder(table)
    dec.decode(_rows([0], prompt=range(6100)) + _rows([1], prompt=range(100)) + _rows([2], prompt=range(5)),
               DecodeRequest(task=None, timestamps=False, fallback=fb.FallbackConfig(temperatures=(0.0,))))
    lengths = sorted(len(c["prompt"][0]) for c in dec.calls)
    assert lengths == [5, 96, 223]  # the newest 223 tokens; 100 -> bucket 96; short prompts whole
    long_call = next(c for c in dec.calls if len(c["prompt"][0]) == 223)
    assert long_call["prompt"][0] == list(range(6100 - 223, 6100))
    assert {len(trim_prompt(range(n))) for n in range(16, 2000)} == {16, 32, 48, 64, 96, 128, 160, 192, 223}


def test_submit_runs_asynchronously_and_keeps_row_order():
    table = {(i, 0.0): ([50 + i], -0.1, 0.0) for i in range(5)}
    dec = FakeDecoder(table, batch_size=8)
    feats = np.stack([r.features for r in _rows(range(5))])
    pending = dec.submit(feats, REQUEST)
    assert pending.count == 5 and dec.calls[0]["ids"] == [0, 1, 2, 3, 4, 4, 4, 4]
    assert [r.tokens for r in pending.result()] == [(50,), (51,), (52,), (53,), (54,)]


def test_rows_of_different_prompt_lengths_are_grouped():
    table = {(i, 0.0): ([60 + i], -0.1, 0.0) for i in range(4)}
    dec = FakeDecoder(table)
    out = dec.decode(_rows([0]) + _rows([1], prompt=[1, 2]) + _rows([2]) + _rows([3], prompt=[3, 4]),
                     DecodeRequest(task=None, timestamps=False, fallback=fb.FallbackConfig(temperatures=(0.0,))))
    assert [r.tokens for r in out] == [(60,), (61,), (62,), (63,)]
    assert sorted(c["ids"] for c in dec.calls) == [[0, 2], [1, 3]]


@pytest.mark.parametrize("count, batch, expected", [(1, 8, 1), (3, 8, 4), (5, 8, 8), (8, 8, 8)])
def test_padding_buckets(count, batch, expected):
    table = {(i, 0.0): ([70], -0.1, 0.0) for i in range(count)}
    dec = FakeDecoder(table, batch_size=batch)
    dec.decode(_rows(range(count)), DecodeRequest(task=None, timestamps=False,
                                                  fallback=fb.FallbackConfig(temperatures=(0.0,))))
    assert len(dec.calls[0]["ids"]) == expected


def test_accelerator_hint(monkeypatch):
    """A GPU or TPU machine with a CPU-only jaxlib is told how to install the right JAX (issue [1/4] 15)."""
    import os

    from whisper_t5x import pipeline

    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/nvidia0")
    assert 'jax[cuda13]' in pipeline.accelerator_hint("cpu")
    assert pipeline.accelerator_hint("gpu") is None
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/accel0")
    assert 'jax[tpu]' in pipeline.accelerator_hint("cpu")
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert pipeline.accelerator_hint("cpu") is None
