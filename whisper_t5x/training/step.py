"""The train step and the eval-loss step, and their partitioning.

``make_train_step`` returns a pure ``train_step(state, batch[, teacher_params])
-> (state, metrics)`` that reads top to bottom: split the batch into
microbatches, sum the loss and its gradients over them (``lax.scan``), divide
once by the batch's token count, clip and apply AdamW, keep frozen parameters
bit for bit. Only trainable parameters are differentiated, so a frozen
encoder costs a forward pass and nothing else.

Because the objective returns masked *sums*, ``k`` microbatches give the same
gradient as one pass over the whole batch (the per-token mean of the batch),
up to float summation order.

Distillation passes a :class:`Teacher`; its parameters are the step's third
argument (never closed over: they would be baked into the program). With
``share_encoder`` the student's frozen encoder output, which equals the
teacher's when the student was initialised from it, feeds both decoders, so
the encoder runs once per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from whisper_t5x.model.whisper import WhisperModule
from whisper_t5x.training import losses
from whisper_t5x.training.optim import Optimizer, path_name
from whisper_t5x.training.state import TrainState

Array = jax.Array

__all__ = [
    "SharedEncoderError",
    "Teacher",
    "TrainBatch",
    "loss_and_grads",
    "make_eval_step",
    "make_train_step",
    "partition_eval_step",
    "partition_train_step",
    "resolve_objective",
]


class SharedEncoderError(ValueError):
    """``share_encoder`` asked while the student's encoder trains (its output is no longer the teacher's)."""


@flax.struct.dataclass
class TrainBatch:
    """One global batch.

    ``input_features`` ``[B, n_mels, 3000]`` float32 log-mel; ``decoder_input_ids``
    ``[B, L]`` int32; ``labels`` ``[B, L]`` int32, the input ids shifted left by
    one; ``loss_mask`` ``[B, L]`` float32, 0 on the forced prefix, the prompt and
    padding, 1 on the target text/timestamp tokens and the final end-of-text.
    """

    input_features: Any
    decoder_input_ids: Any
    labels: Any
    loss_mask: Any

    @property
    def batch_size(self) -> int:
        return int(self.decoder_input_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The distillation teacher: its module (any dtype) and whether it reuses the student's encoder output."""

    module: WhisperModule
    share_encoder: bool = False


def resolve_objective(loss: Union[str, Callable], label_smoothing: float = 0.0) -> losses.Objective:
    """``"ce"`` -> cross-entropy, ``"distill"`` -> the default distillation objective, a callable as is."""
    if callable(loss):
        return loss
    if loss == "ce":
        return losses.cross_entropy_objective(label_smoothing)
    if loss == "distill":
        return losses.distillation_objective(label_smoothing=label_smoothing)
    raise ValueError(f"loss must be 'ce', 'distill' or a callable, got {loss!r}")


def _encoder_frozen(optimizer: Optimizer, params) -> bool:
    flags = [t for p, t in jax.tree_util.tree_leaves_with_path(optimizer.is_trainable(params))
             if path_name(p).startswith("encoder/")]
    return bool(flags) and not any(flags)


def _forward(module: WhisperModule, teacher: Optional[Teacher], params, batch: TrainBatch, teacher_params):
    """Student logits, and the teacher's (or None), for one (micro)batch."""
    variables = {"params": params}
    hidden = module.apply(variables, batch.input_features, method=WhisperModule.encode)
    logits = module.apply(variables, batch.decoder_input_ids, encoder_hidden=hidden,
                          method=WhisperModule.decode).logits
    if teacher is None:
        return logits, None
    t_vars = {"params": teacher_params}
    if teacher.share_encoder:
        t_hidden = jax.lax.stop_gradient(hidden).astype(teacher.module.dtype)
    else:
        t_hidden = teacher.module.apply(t_vars, batch.input_features, method=WhisperModule.encode)
    t_logits = teacher.module.apply(t_vars, batch.decoder_input_ids, encoder_hidden=t_hidden,
                                    method=WhisperModule.decode).logits
    return logits, jax.lax.stop_gradient(t_logits)


def _microbatches(batch: TrainBatch, k: int) -> TrainBatch:
    """``[B, ...]`` -> ``[k, B / k, ...]`` taking every k-th row, so each microbatch keeps rows on every
    data shard (a contiguous split would put a microbatch on few devices)."""
    def split(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"batch size {b} is not a multiple of accumulation_steps={k}")
        return jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
    return jax.tree_util.tree_map(split, batch)


def loss_and_grads(module: WhisperModule, objective: losses.Objective, params: Any, batch: TrainBatch,
                   trainable: Any = None, teacher: Optional[Teacher] = None, teacher_params: Any = None,
                   accumulation_steps: int = 1):
    """``(loss_sum, token_count, parts, grads)`` of one batch, summed over its ``accumulation_steps``
    microbatches; ``grads`` is the gradient of ``loss_sum`` (divide by ``token_count`` for the mean's) as a
    params-shaped tree with ``None`` at frozen leaves, which are never differentiated."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    flags = [True] * len(leaves) if trainable is None else [bool(t) for t in jax.tree_util.tree_leaves(trainable)]
    train_idx = [i for i, t in enumerate(flags) if t]

    def loss_fn(train_leaves, mb):
        full = list(leaves)
        for i, x in zip(train_idx, train_leaves):
            full[i] = x
        logits, t_logits = _forward(module, teacher, treedef.unflatten(full), mb, teacher_params)
        loss_sum, count, parts = objective(logits, mb.labels, mb.loss_mask, t_logits)
        return loss_sum, (count, parts)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    train_leaves = [leaves[i] for i in train_idx]
    k = int(accumulation_steps)
    if k == 1:
        (loss_sum, (count, parts)), grads = grad_fn(train_leaves, batch)
    else:
        def body(carry, mb):
            return jax.tree_util.tree_map(jnp.add, carry, grad_fn(train_leaves, mb)), None

        mbs = _microbatches(batch, k)
        shapes = jax.eval_shape(grad_fn, train_leaves, jax.tree_util.tree_map(lambda x: x[0], mbs))
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        ((loss_sum, (count, parts)), grads), _ = jax.lax.scan(body, zeros, mbs)
    it = iter(grads)
    full_grads = treedef.unflatten([next(it) if t else None for t in flags])
    return loss_sum, count, parts, full_grads


def make_train_step(module: WhisperModule, optimizer: Optimizer, loss: Union[str, Callable] = "ce",
                    accumulation_steps: int = 1, teacher: Optional[Teacher] = None,
                    label_smoothing: float = 0.0) -> Callable:
    """A pure ``train_step(state, batch, teacher_params=None) -> (state, metrics)``.

    ``module``'s ``dtype`` is the compute dtype (``jnp.bfloat16`` for mixed
    precision); the state's parameters and optimizer state stay float32.
    ``loss``: ``"ce"``, ``"distill"`` or an objective (``training.losses``).
    ``metrics`` are device scalars: ``loss`` (per token), ``token_count``,
    ``grad_norm`` (before clipping), ``learning_rate`` (of this update), and the
    objective's parts per token (``ce``, and ``kl`` when distilling).
    """
    objective = resolve_objective(loss, label_smoothing)
    k = int(accumulation_steps)
    if k < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    if getattr(objective, "needs_teacher", False) and teacher is None:
        raise losses.MissingTeacherLogitsError("a distillation loss needs a teacher (make_train_step(teacher=...))")

    def train_step(state: TrainState, batch: TrainBatch, teacher_params: Any = None) -> Tuple[TrainState, dict]:
        params = state.params
        if teacher is not None and teacher.share_encoder and not _encoder_frozen(optimizer, params):
            raise SharedEncoderError("Teacher(share_encoder=True) needs the student's encoder frozen")
        if teacher is not None and teacher_params is None:
            raise losses.MissingTeacherLogitsError("this train step distils: pass teacher_params")
        loss_sum, count, parts, grads = loss_and_grads(module, objective, params, batch, optimizer.trainable,
                                                       teacher, teacher_params, k)
        denom = jnp.maximum(count, 1.0)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        grads = [None if g is None else g / denom for g in treedef.flatten_up_to(grads)]
        grad_norm = optax.tree.norm([g for g in grads if g is not None])
        # The optimizer sees zeros for frozen leaves (its "frozen" branch ignores them) and frozen
        # parameters are carried over untouched, bit for bit.
        full = treedef.unflatten([jnp.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)])
        updates, opt_state = optimizer.update(full, state.opt_state, params)
        updated = treedef.flatten_up_to(optax.apply_updates(params, updates))
        new_params = treedef.unflatten([x if g is None else u for u, x, g in zip(updated, leaves, grads)])
        next_rng, _ = jax.random.split(state.rng)
        metrics = {"loss": loss_sum / denom, "token_count": count, "grad_norm": grad_norm,
                   "learning_rate": jnp.asarray(optimizer.learning_rate(state.step), jnp.float32)}
        metrics.update({name: value / denom for name, value in parts.items()})
        new_state = TrainState(step=state.step + 1, params=new_params, opt_state=opt_state, rng=next_rng)
        return new_state, metrics

    return train_step


def make_eval_step(module: WhisperModule, loss: Union[str, Callable] = "ce", teacher: Optional[Teacher] = None,
                   label_smoothing: float = 0.0) -> Callable:
    """A pure ``eval_step(params, batch, teacher_params=None) -> metrics`` with ``loss_sum``,
    ``token_count`` and the parts' sums (add them over batches; divide at the end) and ``loss``."""
    objective = resolve_objective(loss, label_smoothing)

    def eval_step(params: Any, batch: TrainBatch, teacher_params: Any = None) -> dict:
        logits, t_logits = _forward(module, teacher, params, batch, teacher_params)
        loss_sum, count, parts = objective(logits, batch.labels, batch.loss_mask, t_logits)
        metrics = {"loss_sum": loss_sum, "token_count": count, "loss": loss_sum / jnp.maximum(count, 1.0)}
        metrics.update({f"{name}_sum": value for name, value in parts.items()})
        return metrics

    return eval_step


def partition_train_step(partitioner, train_step: Callable, state_axes: TrainState,
                         teacher_axes: Any = None, data_spec: Optional[PartitionSpec] = None):
    """``partitioner.partition(train_step, in=(state_axes, data_spec[, teacher_axes]), out=(state_axes, None),
    donate the state)``. ``data_spec`` defaults to the batch over the ``data`` axis."""
    data_spec = partitioner.data_partition_spec if data_spec is None else data_spec
    ins = (state_axes, data_spec) if teacher_axes is None else (state_axes, data_spec, teacher_axes)
    return partitioner.partition(train_step, in_axis_resources=ins, out_axis_resources=(state_axes, None),
                                 donate_argnums=(0,))


def partition_eval_step(partitioner, eval_step: Callable, params_axes: Any, teacher_axes: Any = None,
                        data_spec: Optional[PartitionSpec] = None):
    """The eval step over the mesh; ``params_axes`` are the parameters' mesh specs (``state_axes.params``)."""
    data_spec = partitioner.data_partition_spec if data_spec is None else data_spec
    ins = (params_axes, data_spec) if teacher_axes is None else (params_axes, data_spec, teacher_axes)
    return partitioner.partition(eval_step, in_axis_resources=ins, out_axis_resources=None)
