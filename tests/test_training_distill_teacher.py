"""When may the distillation teacher reuse the student's encoder output? Only when the student's encoder IS the
teacher's: frozen, same configuration, same parameters bit for bit (checked on the run's state, fresh or resumed).

``whisper-t5x distill`` runs are stopped just before the train step is built (``step.make_train_step`` patched to
record the :class:`~whisper_t5x.training.step.Teacher` it is given), so no step is compiled.
"""

import os

import numpy as np
import pytest

from tests._training_io_fixtures import save_tiny_model, sine_dataset, tiny_config

pytest.importorskip("datasets")
pytest.importorskip("orbax.checkpoint")

QUICK = ["--batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "0", "--log_every", "1",
         "--gin.OptimizerConfig.total_steps=10", "--gin.TrainConfig.progress=False",
         "--gin.TrainConfig.eval_at_start=False", "--quiet"]


class _Built(Exception):
    """Raised by the patched make_train_step: the run got as far as the train step."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_teacher")
    os.environ.setdefault("WHISPER_T5X_CACHE", str(root / "jax_cache"))
    return {"teacher": save_tiny_model(root / "teacher", seed=0), "other": save_tiny_model(root / "other", seed=1),
            "data": sine_dataset(root / "data"), "root": root}


def _distill(setup, out, *extra):
    from whisper_t5x.main import main

    return main(["whisper-t5x", "distill", "--dataset", setup["data"], "--output_dir", str(out),
                 "--teacher", setup["teacher"]] + QUICK + list(extra))


def _teacher_given(setup, monkeypatch, out, *extra):
    from whisper_t5x.training import step

    seen = {}

    def fake(*args, teacher=None, **kwargs):
        seen["teacher"] = teacher
        raise _Built

    monkeypatch.setattr(step, "make_train_step", fake)
    with pytest.raises(_Built):
        _distill(setup, out, "--max_steps", "2", *extra)
    return seen["teacher"]


# ------------------------------------------------------------------ the rule
def test_encoder_is_teachers():
    import jax

    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.training.student import encoder_is_teachers, student_from_teacher

    config = tiny_config()
    teacher = FlaxWhisperForConditionalGeneration(config, seed=0).params
    s_config, student = student_from_teacher(config, teacher, 1)
    assert encoder_is_teachers(s_config, student, config, teacher)
    other = FlaxWhisperForConditionalGeneration(config, seed=1).params
    assert not encoder_is_teachers(config, other, config, teacher)  # same shapes, other weights
    nudged = jax.tree_util.tree_map(lambda x: x, student)
    nudged["encoder"]["layer_norm"]["scale"] = np.asarray(nudged["encoder"]["layer_norm"]["scale"]) + 1e-7
    assert not encoder_is_teachers(s_config, nudged, config, teacher)  # one parameter moved: not shared
    wider = tiny_config(encoder_ffn_dim=128)
    assert not encoder_is_teachers(wider, FlaxWhisperForConditionalGeneration(wider, seed=0).params,
                                   config, teacher)


# ------------------------------------------------------------------ the run applies it
def test_student_made_from_the_teacher_and_frozen_shares(setup, tmp_path, monkeypatch):
    teacher = _teacher_given(setup, monkeypatch, tmp_path / "a", "--student_decoder_layers", "1",
                             "--freeze_encoder")
    assert teacher is not None and teacher.share_encoder


def test_student_from_another_checkpoint_does_not_share(setup, tmp_path, monkeypatch):
    # same shapes as the teacher, other weights: before the fix, --freeze_encoder alone turned sharing on
    teacher = _teacher_given(setup, monkeypatch, tmp_path / "b", "--model", setup["other"], "--freeze_encoder")
    assert teacher is not None and not teacher.share_encoder


def test_encoder_that_trains_does_not_share(setup, tmp_path, monkeypatch):
    teacher = _teacher_given(setup, monkeypatch, tmp_path / "c", "--student_decoder_layers", "1",
                             "--freeze_encoder", "false")
    assert teacher is not None and not teacher.share_encoder


@pytest.mark.slow
def test_resumed_with_another_teacher_does_not_share(setup, tmp_path, monkeypatch):
    out = tmp_path / "d"
    assert _distill(setup, out, "--student_decoder_layers", "1", "--freeze_encoder", "--max_steps", "1",
                    "--save_every", "1") == 0
    # resumed against a teacher of the same shape but other weights: the restored encoder is not its encoder
    teacher = _teacher_given(setup, monkeypatch, out, "--student_decoder_layers", "1", "--freeze_encoder",
                             "--teacher", setup["other"])
    assert teacher is not None and not teacher.share_encoder
