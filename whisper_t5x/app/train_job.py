"""One ``whisper-t5x train`` / ``distill`` run: build what :class:`TrainConfig` names, then run the loop.

:func:`run_training` reads as the setup::

    partitioner (mesh + rules)  ->  batch size checked against processes and the data axis
    model (or teacher + student)  ->  targets builder  ->  rows of the train / eval splits
    optimizer  ->  train state: restored from OUT/checkpoints (onto its shardings) or placed fresh
    partitioned train and eval steps  ->  loader from the data position  ->  loop  ->  export

Every check that can fail does so before the first step: bad configuration,
an unknown model, a missing text column, an empty split, a batch size the
processes or the data axis do not divide, an English-only model with
non-English targets, a student with more decoder layers than its teacher, a
checkpoint of another model. They are :data:`SETUP_ERRORS`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

from whisper_t5x.app.gin_config import CONFIG_FILENAME, write_config
from whisper_t5x.app.label.source import SourceError
from whisper_t5x.app.train_config import TrainConfig
from whisper_t5x.app.train_data import open_rows
from whisper_t5x.training import checkpointing, data, evaluate, loop, losses, optim, state as state_lib, step
from whisper_t5x.training.student import (StudentLayersError, describe_student, encoder_is_teachers,
                                          student_from_teacher)
from whisper_t5x.training.targets import TargetBuilder, TargetConfig, TargetError

logger = logging.getLogger("whisper_t5x.app.train")

__all__ = ["SETUP_ERRORS", "SetupError", "distill_teacher", "run_training"]

CHECKPOINTS, EXPORT = "checkpoints", "export"


class SetupError(RuntimeError):
    """The run cannot start (a model that does not load, a model without a tokenizer...)."""


SETUP_ERRORS = (SetupError, SourceError, data.DataError, TargetError, StudentLayersError,
                checkpointing.CheckpointMismatchError, optim.OptimizerConfigError)


# ------------------------------------------------------------------ pieces
def build_partitioner(spec: Any):
    """The training mesh spans every process's devices (gradients are reduced over all of them).

    ``spec``: ``None`` (data parallel over all devices), a partitioner, or a
    factory such as ``@partitioning.PjitPartitioner`` called with no arguments.
    """
    from partitioning import PjitPartitioner, rules_for

    if spec is None:
        return PjitPartitioner(num_partitions=1, logical_axis_rules=rules_for("dp"))
    if hasattr(spec, "partition") and not isinstance(spec, type):
        return spec
    return spec()


def _jnp_dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[str(name)]


def _load(name: str, dtype, scan_layers: bool):
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    try:
        return FlaxWhisperForConditionalGeneration.from_pretrained(name, dtype=dtype, _do_init=False,
                                                                   scan_layers=scan_layers)
    except Exception as e:  # noqa: BLE001 - unknown name, bad files ...: one line naming the model
        raise SetupError(f"cannot load model {name!r}: {type(e).__name__}: {e}") from e


def _with_config(model, config):
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    return FlaxWhisperForConditionalGeneration(config, dtype=model.dtype, _do_init=False,
                                               tokenizer_file=model.tokenizer_file,
                                               generation_config=model.generation_config)


def load_models(config: TrainConfig) -> Tuple[Any, Any, Any, Any]:
    """``(model, params, teacher, teacher_params)``; the teacher pair is ``None`` when fine-tuning.

    Distilling with ``student_decoder_layers``: the student is the teacher's
    encoder and that many of its decoder layers; without it the student is
    ``ModelSection.name`` as it is.
    """
    dtype, scan = _jnp_dtype(config.model.dtype), bool(config.scan_layers)
    teacher = teacher_params = None
    if config.distill is None:
        model, params = _load(config.model.name, dtype, scan)
    else:
        teacher, teacher_params = _load(config.distill.teacher, dtype, scan)
        if config.distill.student_decoder_layers is not None:
            student_config, params = student_from_teacher(teacher.config, teacher_params,
                                                          config.distill.student_decoder_layers)
            logger.info(describe_student(teacher.config, config.distill.student_decoder_layers))
            model = _with_config(teacher, student_config)
        else:
            model, params = _load(config.model.name, dtype, scan)
        if model.config.vocab_size != teacher.config.vocab_size:
            raise SetupError(f"the student's vocabulary ({model.config.vocab_size}) is not the teacher's "
                             f"({teacher.config.vocab_size})")
    if config.remat_policy is not None:
        model = _with_config(model, model.config.replace(remat_policy=config.remat_policy))
    if model.tokenizer is None:
        raise SetupError(f"model {config.model.name!r} has no tokenizer.json: targets cannot be tokenized")
    return model, params, teacher, teacher_params


def _sum_over_processes(count: int):
    if count <= 1:
        return lambda v: v
    from jax.experimental import multihost_utils

    return lambda v: multihost_utils.process_allgather(v).sum(axis=0)


def _params_mesh_axes(partitioner, params_axes, params):
    logical = state_lib.params_logical_axes(params_axes, params)
    return partitioner.fit_to_shapes(partitioner.logical_to_mesh_axes(logical), params)


def distill_teacher(config: TrainConfig, model, params, teacher, teacher_params) -> step.Teacher:
    """The step's :class:`step.Teacher`. It reuses the student's encoder output only when that output is the
    teacher's: the encoder frozen (``--freeze_encoder``), the same compute dtype, and the same encoder
    configuration and parameters bit for bit, checked on the run's state (fresh or restored). A student made
    from this teacher (``--student_decoder_layers``) shares; one loaded with ``--model`` from another
    checkpoint, or resumed after its encoder was trained, runs the teacher's own encoder."""
    share = (bool(config.freeze_encoder) and model.dtype == teacher.dtype
             and encoder_is_teachers(model.config, params, teacher.config, teacher_params))
    if config.freeze_encoder:
        logger.info("frozen encoder: %s", "the teacher reuses the student's encoder output" if share else
                    "the student's encoder is not the teacher's; the teacher runs its own encoder")
    return step.Teacher(teacher.module, share_encoder=share)


def _initial_state(config: TrainConfig, partitioner, optimizer, model, params, checkpointer):
    """``(state, state_axes, start_step, position)``: the latest checkpoint's, or a fresh state."""
    import jax
    import jax.numpy as jnp

    seed = config.data.seed
    if checkpointer.latest_step() is None:
        st, axes = state_lib.shard_state_from_params(partitioner, optimizer, params, model.params_axes, rng=seed)
        return st, axes, 0, data.DataPosition()
    zeros = lambda _: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jnp.float32), params)  # noqa: E731
    abstract, axes = state_lib.abstract_state(partitioner, optimizer, zeros, model.params_axes, rng=seed)
    st, meta = checkpointer.restore(abstract, model_config=model.config.to_hf_dict())
    saved = (meta.get("batch_size"), meta.get("seed"))
    if saved != (config.batch_size, seed):
        logger.warning("the checkpoint was written with batch size %s and seed %s, this run has %s and %s: the "
                       "data order does not continue exactly", saved[0], saved[1], config.batch_size, seed)
    return st, axes, int(meta["step"]), data.DataPosition.from_dict(meta.get("data_position") or {})


def _evaluator(config, model, builder, partitioner, eval_step, st, axes, batch_size, index, count):
    from whisper_t5x.longform.decoder import DecodeRequest, Decoder
    from whisper_t5x.longform.fallback import FallbackConfig

    d = config.data
    rows = open_rows(d.dataset, d.eval_split, dataset_config=d.dataset_config, audio_column=d.audio_column,
                     text_column=d.text_column, id_column=d.id_column, labels=d.labels, language=d.language,
                     max_rows=d.max_eval_rows)
    batches, real = data.eval_batches(rows, builder, batch_size, model.config.num_mel_bins,
                                      process_index=index, process_count=count)
    refs = [[rows.examples[int(i)].text for i in b.rows[:r]] for b, r in zip(batches, real)]
    eval_set = evaluate.EvalSet(batches, real, refs)

    def loss_step(params, fields, tp):
        batch = step.TrainBatch(**partitioner.make_global_batch(fields, global_batch_size=batch_size))
        return eval_step(params, batch) if tp is None else eval_step(params, batch, tp)

    decoder = request = None
    if count == 1:  # WER decodes with this process's mesh; a multi-host run reports the eval loss only
        decoder = Decoder(model, st.params, batch_size=batch_size)
        decoder.set_params(st.params, partitioner, axes.params)
        language = d.language if model.config.is_multilingual else None
        request = DecodeRequest(task=d.task, language=language, timestamps=False, sample_len=config.eval_sample_len,
                                fallback=FallbackConfig(temperatures=(0.0,)))
    return evaluate.Evaluator(eval_set, loss_step, decoder, request, language=d.language or "en",
                              sum_over_processes=_sum_over_processes(count))


# ------------------------------------------------------------------ the run
def run_training(config: TrainConfig, process_index: int = 0, process_count: int = 1, config_header: str = "",
                 export_only: bool = False) -> loop.TrainResult:
    """Builds the run and trains (or, with ``export_only``, exports the latest checkpoint)."""
    from whisper_t5x.compile_cache import enable_compile_cache

    enable_compile_cache()  # a resumed run reuses the compiled steps
    out = os.path.abspath(config.output_dir)
    partitioner = build_partitioner(config.partition.partitioner)
    batch_size = config.batch_size
    eval_batch = config.eval_batch_size or batch_size
    for b in {batch_size, eval_batch}:
        data.check_batch_size(b, process_count, partitioner.data_mesh_size)
    model, params, teacher, teacher_params = load_models(config)
    d = config.data
    builder = TargetBuilder(model.tokenizer, TargetConfig(
        task=d.task, language=d.language, timestamp_probability=d.timestamp_probability,
        prompt_probability=d.prompt_probability, max_length=model.config.max_target_positions,
        max_prompt_length=model.config.max_target_positions // 2 - 1))
    rows = lengths = None
    if not export_only:
        rows = open_rows(d.dataset, d.split, dataset_config=d.dataset_config, audio_column=d.audio_column,
                         text_column=d.text_column, id_column=d.id_column, labels=d.labels, language=d.language,
                         prompt_column=d.prompt_column, segments_column=d.segments_column,
                         max_rows=d.max_train_rows)
        lengths = data.prepare_rows(rows, builder, batch_size)
    trainable = optim.trainable_mask(params, freeze_encoder=config.freeze_encoder)
    optimizer = optim.make_optimizer(config.optimizer, params, trainable)
    checkpointer = checkpointing.TrainCheckpointer(os.path.join(out, CHECKPOINTS), keep=config.keep_checkpoints,
                                                   async_save=config.async_checkpoints)
    st, axes, start_step, position = _initial_state(config, partitioner, optimizer, model, params, checkpointer)
    del params  # the state holds the parameters now

    def export(p) -> Optional[str]:
        return checkpointing.export_hf(os.path.join(out, EXPORT), model.config, p, model.tokenizer_file,
                                       model.generation_config, process_index, process_count)

    if export_only:
        checkpointer.close()
        return loop.TrainResult(step=start_step, export_dir=export(st.params))
    if process_index == 0:
        write_config(os.path.join(out, CONFIG_FILENAME), config_header)

    teacher_obj = teacher_axes = None
    objective: Any = losses.cross_entropy_objective(config.label_smoothing)
    eval_objective: Any = losses.cross_entropy_objective(0.0)  # the eval loss is plain: comparable across runs
    if config.distill is not None:
        dist = config.distill
        teacher_axes = _params_mesh_axes(partitioner, teacher.params_axes, teacher_params)
        teacher_params = partitioner.shard_host_params(teacher_params, teacher_axes)
        teacher_obj = distill_teacher(config, model, st.params, teacher, teacher_params)
        objective = losses.distillation_objective(dist.ce_weight, dist.kl_weight, dist.temperature,
                                                  config.label_smoothing)
        eval_objective = losses.distillation_objective(dist.ce_weight, dist.kl_weight, dist.temperature, 0.0)
    train_step = step.partition_train_step(partitioner, step.make_train_step(
        model.module, optimizer, loss=objective, accumulation_steps=config.optimizer.accumulation_steps,
        teacher=teacher_obj), axes, teacher_axes)
    evaluator = None
    if d.eval_split:
        eval_step = step.partition_eval_step(partitioner, step.make_eval_step(
            model.module, loss=eval_objective, teacher=teacher_obj), axes.params, teacher_axes)
        evaluator = _evaluator(config, model, builder, partitioner, eval_step, st, axes, eval_batch, process_index,
                               process_count)

    def make_batch(fields: Dict[str, Any]):
        return step.TrainBatch(**partitioner.make_global_batch(fields, global_batch_size=batch_size))

    def meta(pos: data.DataPosition) -> Dict[str, Any]:
        return {"data_position": pos.as_dict(), "model_config": model.config.to_hf_dict(),
                "batch_size": batch_size, "seed": d.seed, "process_count": process_count,
                "kind": "distill" if config.distill else "finetune"}

    augment = config.spec_augment if d.spec_augment else None
    loader = data.BatchLoader(rows, builder, data.DataConfig(batch_size, d.seed, d.pool_batches, prefetch=d.prefetch,
                                                             load_workers=d.load_workers, spec_augment=augment),
                              model.config.num_mel_bins, start=position, process_index=process_index,
                              process_count=process_count, lengths=lengths)
    from whisper_t5x.training.metrics import MetricsLog

    log = MetricsLog(out, start_step=start_step, total_steps=config.max_steps, enabled=process_index == 0,
                     tensorboard=config.tensorboard, progress=config.progress)
    if start_step:
        log.message(f"resuming at step {start_step} (epoch {position.epoch}, batch {position.index})")
    trainer = loop.Trainer(train_step=train_step, state=st, loader=loader, make_batch=make_batch,
                           checkpointer=checkpointer, checkpoint_meta=meta, log=log,
                           teacher_params=teacher_params if config.distill else None,
                           evaluate=evaluator, export=export if config.export else None,
                           sum_over_processes=_sum_over_processes(process_count))
    try:
        return loop.train(trainer, loop.LoopConfig(config.max_steps, config.log_every, config.eval_every,
                                                   config.eval_at_start, config.save_every), start_step)
    finally:
        log.close()
        checkpointer.close()

