"""Training input: targets (exact token layout and loss mask), SpecAugment, and the batch order
(deterministic, exactly resumable, the same rows on any process count). No model, no devices."""

import numpy as np
import pytest

from whisper_t5x.training import data as D
from whisper_t5x.training.specaugment import SpecAugmentConfig, spec_augment
from whisper_t5x.training.targets import (
    Example, MissingLanguageError, NonEnglishTargetError, TargetBuilder, TargetConfig, TargetTooLongError,
    TimedText, TokenRow, collate, padded_length,
)


def _tokenizer(name):
    from whisper_t5x.checkpoints.named import resolve_named_model
    from whisper_t5x.text.tokenizer import WhisperTokenizer

    try:
        directory, _ = resolve_named_model(name)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{name} not installed: {e}")
    return WhisperTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def en_tok():
    return _tokenizer("tiny.en")


@pytest.fixture(scope="module")
def multi_tok():
    return _tokenizer("base")


def _mask_of(row: TokenRow):
    return row.arrays()[2].tolist()


# ------------------------------------------------------------------ targets
def test_english_only_plain_row(en_tok):
    b = TargetBuilder(en_tok, TargetConfig(timestamp_probability=0.0, prompt_probability=0.0))
    row = b.build(Example("Hello world."), np.random.default_rng(0))
    text = en_tok.encode(" Hello world.")
    assert list(row.tokens) == [en_tok.sot, en_tok.no_timestamps] + text + [en_tok.eot]
    ids, labels, mask = row.arrays()
    assert ids.tolist() == list(row.tokens[:-1]) and labels.tolist() == list(row.tokens[1:])
    # label 0 is <|notimestamps|> (forced): masked; the text and <|endoftext|> are learned
    assert mask.tolist() == [0.0] + [1.0] * (len(text) + 1)


def test_multilingual_prefix_and_prompt(multi_tok):
    b = TargetBuilder(multi_tok, TargetConfig(language="de", timestamp_probability=0.0, prompt_probability=1.0))
    row = b.build(Example("Guten Tag.", previous_text="Hallo."), np.random.default_rng(0))
    prev = multi_tok.encode(" Hallo.")
    text = multi_tok.encode(" Guten Tag.")
    prefix = [multi_tok.sot, multi_tok.language_id("de"), multi_tok.transcribe, multi_tok.no_timestamps]
    assert list(row.tokens) == [multi_tok.sot_prev] + prev + prefix + text + [multi_tok.eot]
    # labels: prev tokens (prompt), then sot, de, transcribe, notimestamps -> all masked
    assert _mask_of(row) == [0.0] * (len(prev) + 4) + [1.0] * (len(text) + 1)
    # a row's own language wins over the configured default; the task token follows the config
    b2 = TargetBuilder(multi_tok, TargetConfig(language="de", task="translate", timestamp_probability=0.0,
                                               prompt_probability=0.0))
    row2 = b2.build(Example("Hello.", language="fr"), np.random.default_rng(0))
    assert list(row2.tokens[:4]) == [multi_tok.sot, multi_tok.language_id("fr"), multi_tok.translate,
                                     multi_tok.no_timestamps]


def test_timestamps_from_segments(multi_tok):
    b = TargetBuilder(multi_tok, TargetConfig(language="en", timestamp_probability=1.0, prompt_probability=0.0))
    segs = (TimedText(0.0, 1.5, "One."), TimedText(1.5, 3.02, "Two."))
    row = b.build(Example("One. Two.", segments=segs), np.random.default_rng(0))
    tb = multi_tok.timestamp_begin
    body = [tb + 0] + multi_tok.encode(" One.") + [tb + 75, tb + 75] + multi_tok.encode(" Two.") + [tb + 151]
    prefix = [multi_tok.sot, multi_tok.language_id("en"), multi_tok.transcribe]  # no <|notimestamps|>
    assert list(row.tokens) == prefix + body + [multi_tok.eot]
    assert _mask_of(row) == [0.0, 0.0] + [1.0] * (len(body) + 1)
    # segment times outside one window: the row falls back to <|notimestamps|> and the plain text
    late = b.build(Example("One.", segments=(TimedText(29.0, 31.0, "One."),)), np.random.default_rng(0))
    assert multi_tok.no_timestamps in late.tokens and not any(t >= tb for t in late.tokens)


def test_probabilities_are_drawn_per_row(multi_tok):
    b = TargetBuilder(multi_tok, TargetConfig(language="en", timestamp_probability=0.2, prompt_probability=0.2))
    ex = Example("Some words.", segments=(TimedText(0.0, 1.0, "Some words."),), previous_text="Before.")
    rows = [b.build(ex, np.random.default_rng([7, i])) for i in range(1500)]
    ts = np.mean([multi_tok.no_timestamps not in r.tokens for r in rows])
    pr = np.mean([r.tokens[0] == multi_tok.sot_prev for r in rows])
    assert 0.17 < ts < 0.23 and 0.17 < pr < 0.23
    # the same generator seed gives the same row
    assert b.build(ex, np.random.default_rng([7, 3])) == rows[3]
    # no generator: neither timestamps nor prompt
    plain = b.build(ex, None)
    assert plain.tokens[0] == multi_tok.sot and multi_tok.no_timestamps in plain.tokens


def test_named_errors(en_tok, multi_tok):
    b = TargetBuilder(en_tok, TargetConfig())
    with pytest.raises(NonEnglishTargetError):
        b.check(Example("Hola.", language="es"))
    with pytest.raises(NonEnglishTargetError):
        TargetBuilder(en_tok, TargetConfig(task="translate"))
    with pytest.raises(NonEnglishTargetError):
        TargetBuilder(en_tok, TargetConfig(language="german"))
    assert b.check(Example("Hello.", language="english")) > 0  # names and codes of English are fine
    with pytest.raises(MissingLanguageError):
        TargetBuilder(multi_tok, TargetConfig()).check(Example("Hello."))
    with pytest.raises(TargetTooLongError):
        b.check(Example("word " * 500))


def test_prompt_is_trimmed_to_fit(en_tok):
    cfg = TargetConfig(timestamp_probability=0.0, prompt_probability=1.0, max_length=64, max_prompt_length=40)
    b = TargetBuilder(en_tok, cfg)
    long_prev = " ".join(f"w{i}" for i in range(200))
    row = b.build(Example("a b c", previous_text=long_prev), np.random.default_rng(0))
    prompt_len = row.tokens.index(en_tok.sot)
    assert prompt_len - 1 == 40 and row.length <= 64  # the last 40 tokens of the previous text
    assert list(row.tokens[1:prompt_len]) == en_tok.encode(" " + long_prev)[-40:]
    text = " ".join(["x"] * 50)  # 52 positions of target: only 11 are left for the prompt
    row = b.build(Example(text, previous_text=long_prev), np.random.default_rng(0))
    assert row.length == 64 and row.tokens[0] == en_tok.sot_prev


def test_collate_pads_and_masks(en_tok):
    b = TargetBuilder(en_tok, TargetConfig(timestamp_probability=0.0, prompt_probability=0.0))
    rows = [b.build(Example(t), None) for t in ("a", "a much longer sentence here")]
    length = padded_length(max(r.length for r in rows))
    assert length == 32
    ids, labels, mask = collate(rows, length, en_tok.eot)
    assert ids.shape == labels.shape == mask.shape == (2, 32)
    n0 = rows[0].length
    assert mask[0, n0:].sum() == 0 and (ids[0, n0:] == en_tok.eot).all()
    assert mask[0, :n0].tolist() == rows[0].arrays()[2].tolist()
    assert padded_length(33) == 64 and padded_length(500) == 500


# ------------------------------------------------------------------ SpecAugment
def test_spec_augment_masks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3000)).astype(np.float32)
    cfg = SpecAugmentConfig(time_masks=2, max_time_width=50, max_time_fraction=0.1, freq_masks=2, max_freq_width=10)
    a = spec_augment(x, np.random.default_rng(1), cfg, valid_frames=1000)
    b = spec_augment(x, np.random.default_rng(1), cfg, valid_frames=1000)
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.array_equal(a, spec_augment(x, np.random.default_rng(2), cfg, valid_frames=1000))
    changed = a != x
    fill = float(x[:, :1000].mean())
    assert np.allclose(a[changed], fill)
    cols = np.where(changed.all(axis=0))[0]  # fully masked frames: time masks
    assert cols.size == 0 or cols.max() < 1000  # never in the padding
    assert cols.size <= 2 * 50
    rows = np.where(changed.all(axis=1))[0]
    assert rows.size <= 2 * 10
    assert changed.any()
    np.testing.assert_array_equal(x, x.copy())  # input untouched
    none = spec_augment(x, np.random.default_rng(1), SpecAugmentConfig(time_masks=0, freq_masks=0))
    np.testing.assert_array_equal(none, x)


# ------------------------------------------------------------------ order and loader
def _sine(i, seconds=1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return {"array": (0.1 * np.sin(2 * np.pi * (200 + 20 * i) * t)).astype(np.float32), "sampling_rate": 16000}


def _rowset(n=24, bad=()):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    examples = [Example(" ".join(words[: 1 + i % 6]) + f" {i}", previous_text=f"row {i - 1}" if i else None)
                for i in range(n)]

    def fetch(indices):
        return [ValueError("unreadable") if i in bad else _sine(i, 0.5 + 0.05 * i) for i in indices]

    return D.RowSet("train", examples, fetch)


def test_epoch_batches_deterministic_and_grouped():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=103)
    a = D.epoch_batches(lengths, 8, seed=3, epoch=0, pool_batches=4)
    b = D.epoch_batches(lengths, 8, seed=3, epoch=0, pool_batches=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == 103 // 8
    c = D.epoch_batches(lengths, 8, seed=3, epoch=1, pool_batches=4)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    rows = np.concatenate(a)
    assert len(set(rows.tolist())) == len(rows) == 96  # each row at most once per epoch
    spread = np.mean([np.ptp(lengths[x]) for x in a])
    random_spread = np.mean([np.ptp(lengths[x]) for x in D.epoch_batches(lengths, 8, 3, 0, pool_batches=1)])
    assert spread < 0.6 * random_spread  # similar lengths batch together


@pytest.fixture(scope="module")
def builder(en_tok):
    return TargetBuilder(en_tok, TargetConfig(timestamp_probability=0.0, prompt_probability=0.5))


def _take(loader, n):
    out = [next(loader) for _ in range(n)]
    loader.close()
    return out


def test_resume_is_exact_and_processes_split_the_batch(builder):
    rows = _rowset()
    cfg = D.DataConfig(batch_size=4, seed=1, pool_batches=2, spec_augment=SpecAugmentConfig())
    full = _take(D.BatchLoader(rows, builder, cfg, 80), 7)  # 6 batches per epoch: crosses an epoch
    assert full[5].position == D.DataPosition(1, 0) and full[6].position == D.DataPosition(1, 1)
    resumed = _take(D.BatchLoader(rows, builder, cfg, 80, start=full[3].position), 3)
    for x, y in zip(full[4:], resumed):
        assert x.position == y.position
        for k in D.BATCH_FIELDS:
            np.testing.assert_array_equal(x.fields[k], y.fields[k])
    # two processes: each builds its half of the same global batch
    halves = [_take(D.BatchLoader(rows, builder, cfg, 80, process_index=p, process_count=2, background=False), 2)
              for p in range(2)]
    for k in D.BATCH_FIELDS:
        for s in range(2):
            np.testing.assert_array_equal(np.concatenate([halves[0][s].fields[k], halves[1][s].fields[k]]),
                                          full[s].fields[k])
    assert halves[0][0].tokens == full[0].tokens  # global token count on every process
    assert full[0].fields["input_features"].shape == (4, 80, 3000)
    assert full[0].fields["decoder_input_ids"].dtype == np.int32


def test_unreadable_rows_are_masked_not_fatal(builder):
    rows = _rowset(bad={0, 1, 2, 3, 4, 5, 6, 7})
    cfg = D.DataConfig(batch_size=8, seed=0)
    batch = _take(D.BatchLoader(rows, builder, cfg, 80, background=False), 1)[0]
    bad = np.isin(batch.rows, list(range(8)))
    assert batch.bad_rows == int(bad.sum()) > 0
    assert batch.fields["loss_mask"][bad].sum() == 0 and batch.fields["loss_mask"][~bad].sum() > 0


def test_named_data_errors(builder):
    with pytest.raises(D.EmptySplitError):
        D.BatchLoader(D.RowSet("train", [], lambda i: []), builder, D.DataConfig(batch_size=2), 80)
    with pytest.raises(D.EmptySplitError):
        D.BatchLoader(_rowset(3), builder, D.DataConfig(batch_size=4), 80)
    with pytest.raises(D.BatchSizeError):
        D.BatchLoader(_rowset(), builder, D.DataConfig(batch_size=3), 80, process_count=2)
    with pytest.raises(D.BatchSizeError):
        D.check_batch_size(6, 1, data_size=4)
    with pytest.raises(TargetTooLongError, match="row 1"):
        D.prepare_rows(D.RowSet("train", [Example("ok"), Example("w " * 600)], lambda i: []), builder)


def test_eval_batches_pad_the_last_batch(builder):
    rows = _rowset(6)
    batches, real = D.eval_batches(rows, builder, batch_size=4, n_mels=80)
    assert real == [4, 2] and len(batches) == 2
    last = batches[1]
    assert last.fields["loss_mask"][2:].sum() == 0 and last.fields["loss_mask"][:2].sum() > 0
    # eval rows carry neither prompts nor timestamps
    assert (last.fields["decoder_input_ids"][:, 0] == builder.tokenizer.sot).all()
