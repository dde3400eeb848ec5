"""Training outputs: WER (jiwer over the label job's normaliser; where whisper-normalizer differs), the
metrics files (JSONL, TensorBoard events, the interval's reductions), checkpoints (save / restore
roundtrip of a small random model's train state onto its shardings, named mismatch errors) and the export."""

import json
import os
import struct

import numpy as np
import pytest

from tests._training_io_fixtures import tiny_config, tokenizer_file
from whisper_t5x.text.normalize import EnglishNormalizer, word_error_rate
from whisper_t5x.training import evaluate
from whisper_t5x.training.metrics import IntervalMeter, MetricsLog, read_metrics


# ------------------------------------------------------------------ WER
def test_jiwer_counts_agree_with_ours():
    pairs = [("The cat sat on the mat.", "the cat sat on a mat"), ("It cost twenty five dollars", "It cost $25."),
             ("a b c d", "a x c"), ("one two three", "one two three four five"), ("", "spurious words"),
             ("Hello, world!", "")]
    for ref, hyp in pairs[:4] + pairs[5:]:
        edits, words = evaluate.wer_counts([ref], [hyp])
        assert edits / words == pytest.approx(word_error_rate(ref, hyp))
    edits, words = evaluate.wer_counts([r for r, _ in pairs], [h for _, h in pairs])
    assert (edits, words) == (1 + 0 + 2 + 2 + 2 + 2, 6 + 3 + 4 + 3 + 0 + 2)
    assert evaluate.word_error_rate(["a b"], ["a b"]) == 0.0
    assert np.isnan(evaluate.word_error_rate([""], [""]))


def test_whisper_normalizer_agrees_except_where_ours_differs_on_purpose():
    """whisper-normalizer is openai-whisper's English normaliser: equal to ours on the sentences where ours
    agrees with openai-whisper, different on the listed deliberate differences, so the trainer keeps ours."""
    english = pytest.importorskip("whisper_normalizer.english")
    from tests.test_normalize import AGREE, DIFFER

    theirs = english.EnglishTextNormalizer()
    ours = EnglishNormalizer()
    assert [s for s in AGREE if theirs(s) != ours(s)] == []
    for sentence, (our_text, openai_text) in DIFFER.items():
        assert ours(sentence) == our_text and theirs(sentence) == openai_text != our_text


# ------------------------------------------------------------------ metrics
def _events(directory):
    """Scalars of the TensorBoard event files under ``directory``: [(tag, step, value)]."""
    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(os.listdir(directory)):
        with open(os.path.join(directory, f), "rb") as fh:
            data = fh.read()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                out.append((v.tag, ev.step, v.simple_value))
    return out


def test_interval_meter_reduces_once():
    import jax.numpy as jnp

    now = [0.0]
    meter = IntervalMeter(clock=lambda: now[0])
    meter.add({"loss": jnp.float32(2.0), "token_count": jnp.float32(10), "grad_norm": jnp.float32(1.0),
               "learning_rate": jnp.float32(1e-3)}, tokens=10, audio_seconds=30.0)
    meter.add({"loss": jnp.float32(4.0), "token_count": jnp.float32(30), "grad_norm": jnp.float32(3.0),
               "learning_rate": jnp.float32(5e-4)}, tokens=30, audio_seconds=30.0, bad_rows=1)
    now[0] = 4.0
    out = meter.flush()
    assert out["loss"] == pytest.approx((2 * 10 + 4 * 30) / 40)  # token-weighted
    assert out["grad_norm"] == pytest.approx(2.0) and out["learning_rate"] == pytest.approx(5e-4)
    assert out["target_tokens"] == 40 and out["tokens_per_s"] == pytest.approx(10.0)
    assert out["step_time_s"] == pytest.approx(2.0) and out["audio_hours_per_hour"] == pytest.approx(15.0)
    assert out["masked_rows"] == 1 and meter.steps == 0
    meter.add({"loss": jnp.float32(1.0)}, tokens=5)
    meter.restart_clock()  # the first (compiling) step: its loss kept, its time not
    assert "tokens_per_s" not in meter.flush()


def test_metrics_log_files_and_resume(tmp_path):
    pytest.importorskip("tensorboardX")
    log = MetricsLog(str(tmp_path), progress=False)
    for step in (1, 2, 3):
        log.write(step, {"loss": 1.0 / step, "learning_rate": 1e-3})
    log.write(3, {"loss": 0.5, "wer": 0.25}, split="eval")
    log.close()
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    tags = _events(str(tmp_path / "tensorboard"))
    assert ("train/loss", 2, pytest.approx(0.5)) in [(t, s, pytest.approx(v)) for t, s, v in tags]
    assert any(t == "eval/wer" and s == 3 for t, s, _ in tags)
    # a run resumed from step 2 drops what the killed run wrote after it (and a torn last line)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "spl')
    MetricsLog(str(tmp_path), start_step=2, progress=False, tensorboard=False).close()
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2]
    json.loads(open(tmp_path / "metrics.jsonl").readline())


# ------------------------------------------------------------------ checkpoints
def _state(config, freeze_encoder=False, seed=0, materialize=True):
    """``(model, state or None, abstract state with shardings)`` of a random-init model."""
    import jax
    import jax.numpy as jnp

    from partitioning import PjitPartitioner, rules_for
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.training import optim, state as state_lib

    model = FlaxWhisperForConditionalGeneration(config, seed=seed, _do_init=materialize)
    shapes = model.params_shape_tree
    partitioner = PjitPartitioner(num_partitions=1, logical_axis_rules=rules_for("dp"))
    optimizer = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-3, decay="constant"), shapes,
                                     optim.trainable_mask(shapes, freeze_encoder=freeze_encoder))
    zeros = lambda _: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jnp.float32), shapes)  # noqa: E731
    abstract, _ = state_lib.abstract_state(partitioner, optimizer, zeros, model.params_axes, rng=seed)
    st = None
    if materialize:
        params = jax.tree_util.tree_map(np.asarray, model.params)
        st, _ = state_lib.shard_state_from_params(partitioner, optimizer, params, model.params_axes, rng=seed)
    return model, st, abstract


@pytest.fixture(scope="module")
def small_state():
    return _state(tiny_config(d_model=32, encoder_ffn_dim=128, decoder_ffn_dim=128))


def test_checkpoint_roundtrip_and_named_mismatch(small_state, tmp_path):
    import jax

    from whisper_t5x.training.checkpointing import CheckpointMismatchError, TrainCheckpointer

    model, st, abstract = small_state
    # make the optimizer state non-trivial: one real update of the moments
    st = st.replace(opt_state=jax.tree_util.tree_map(lambda x: x + 0.5 if hasattr(x, "dtype") and
                                                     x.dtype == np.float32 else x, st.opt_state))
    ck = TrainCheckpointer(str(tmp_path / "ck"), keep=2)
    meta = {"data_position": {"epoch": 1, "index": 7}, "model_config": model.config.to_hf_dict()}
    for step in (1, 2, 3):
        ck.save(step, st, meta)
    ck.wait()
    assert ck.all_steps() == [2, 3]  # the last K kept
    restored, got = TrainCheckpointer(str(tmp_path / "ck")).restore(abstract, model_config=model.config.to_hf_dict())
    assert got["step"] == 3 and got["data_position"] == {"epoch": 1, "index": 7}
    a, b = jax.tree_util.tree_leaves(st), jax.tree_util.tree_leaves(restored)
    assert len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    for x, s in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(abstract)):
        assert x.sharding.is_equivalent_to(s.sharding, x.ndim)  # placed on the target shardings
    # another model (wider) and another optimizer layout (frozen encoder): named errors before reading
    other_model, _, other_abstract = _state(tiny_config(d_model=64), materialize=False)
    with pytest.raises(CheckpointMismatchError, match="d_model"):
        ck.restore(other_abstract, model_config=other_model.config.to_hf_dict())
    with pytest.raises(CheckpointMismatchError, match="shapes differ"):
        ck.restore(other_abstract)
    _, _, frozen_abstract = _state(model.config, freeze_encoder=True, materialize=False)
    with pytest.raises(CheckpointMismatchError, match="not in the checkpoint|only in the checkpoint"):
        ck.restore(frozen_abstract)
    ck.close()


def test_export_loads_back(small_state, tmp_path):
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.training.checkpointing import export_hf

    model, st, _ = small_state
    path = export_hf(str(tmp_path / "export"), model.config, st.params, tokenizer_file())
    export_hf(path, model.config, st.params, tokenizer_file())  # a second export replaces the first
    assert sorted(os.listdir(tmp_path)) == ["export"]
    loaded, params = FlaxWhisperForConditionalGeneration.from_pretrained(path, _do_init=False)
    assert loaded.config.replace(begin_suppress_tokens=()) == model.config and loaded.tokenizer is not None
    import jax

    flat = dict(jax.tree_util.tree_leaves_with_path(st.params))
    for k, v in jax.tree_util.tree_leaves_with_path(params):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(flat[k]))
