"""Training losses: pure functions on logits, labels and a loss mask.

Every loss returns a masked *sum* and the number of tokens it covers, never a
mean: sums add across microbatches, hosts and eval batches, and one division
at the end gives the exact per-token mean of the whole batch (gradient
accumulation depends on this). All arithmetic is float32 whatever the logits'
dtype. No full ``log_softmax`` over the vocabulary is materialised for the
cross-entropy: a token's loss is ``logsumexp(logits) - logits[label]``.

An *objective* (:func:`cross_entropy_objective`, :func:`distillation_objective`)
is the callable the train step takes: ``objective(logits, labels, loss_mask,
teacher_logits) -> (loss_sum, token_count, parts)``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
LossOutput = Tuple[Array, Array, Dict[str, Array]]
Objective = Callable[[Array, Array, Array, Optional[Array]], LossOutput]

__all__ = [
    "MissingTeacherLogitsError",
    "Objective",
    "cross_entropy_objective",
    "distillation_loss",
    "distillation_objective",
    "kl_divergence",
    "token_cross_entropy",
]


class MissingTeacherLogitsError(ValueError):
    """A distillation objective was called without the teacher's logits."""


def _check_shapes(logits: Array, labels: Array, loss_mask: Array) -> None:
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape or labels.shape != loss_mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} plus a vocabulary axis, and "
            f"loss_mask {tuple(loss_mask.shape)} must have the labels' shape"
        )


def per_token_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """Unmasked per-token cross-entropy in float32, shape of ``labels``.

    With label smoothing ``e`` the target is ``(1 - e) * onehot + e / V`` (as
    torch's ``CrossEntropyLoss(label_smoothing=e)``), so the loss is
    ``lse - (1 - e) * logit[label] - e * mean(logits)``.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if not label_smoothing:
        return lse - picked
    e = jnp.float32(label_smoothing)
    return lse - (1.0 - e) * picked - e * jnp.mean(logits, axis=-1)


def token_cross_entropy(logits: Array, labels: Array, loss_mask: Array,
                        label_smoothing: float = 0.0) -> Tuple[Array, Array]:
    """Masked cross-entropy: ``(loss_sum, token_count)``, both float32 scalars.

    ``logits`` ``[..., V]`` (any float dtype), ``labels`` ``[...]`` int,
    ``loss_mask`` ``[...]`` (1 where the token counts, 0 on the forced prefix,
    the prompt and padding). ``loss_sum / token_count`` is the mean per-token loss.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    _check_shapes(logits, labels, loss_mask)
    mask = loss_mask.astype(jnp.float32)
    losses = per_token_cross_entropy(logits, labels, label_smoothing)
    return jnp.sum(losses * mask), jnp.sum(mask)


def kl_divergence(teacher_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
    """Per-token ``KL(softmax(teacher / T) || softmax(student / T))`` in float32."""
    t = jnp.float32(temperature)
    teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    # The teacher is a target: no gradient flows into it.
    teacher = jax.lax.stop_gradient(teacher)
    return jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)


def distillation_loss(student_logits: Array, teacher_logits: Array, labels: Array, loss_mask: Array,
                      ce_weight: float = 0.8, kl_weight: float = 1.0, temperature: float = 2.0,
                      label_smoothing: float = 0.0) -> LossOutput:
    """``ce_weight * CE(labels) + kl_weight * T^2 * KL(teacher || student at T)``, summed over tokens.

    Returns ``(loss_sum, token_count, parts)``; ``parts`` holds the masked sums
    ``ce`` (cross-entropy on the pseudo-labels) and ``kl`` (the KL term before
    its weight and ``T^2``), so ``loss_sum = ce_weight * ce + kl_weight * T^2 * kl``.
    The ``T^2`` factor keeps the KL gradients' scale independent of ``T``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    _check_shapes(student_logits, labels, loss_mask)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} != student logits "
                         f"{tuple(student_logits.shape)}: teacher and student must share the vocabulary")
    ce_sum, count = token_cross_entropy(student_logits, labels, loss_mask, label_smoothing)
    mask = loss_mask.astype(jnp.float32)
    kl_sum = jnp.sum(kl_divergence(teacher_logits, student_logits, temperature) * mask)
    loss_sum = jnp.float32(ce_weight) * ce_sum + jnp.float32(kl_weight * temperature ** 2) * kl_sum
    return loss_sum, count, {"ce": ce_sum, "kl": kl_sum}


def cross_entropy_objective(label_smoothing: float = 0.0) -> Objective:
    """The fine-tuning objective: masked cross-entropy (teacher logits ignored)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")

    def objective(logits, labels, loss_mask, teacher_logits=None):
        del teacher_logits
        loss_sum, count = token_cross_entropy(logits, labels, loss_mask, label_smoothing)
        return loss_sum, count, {"ce": loss_sum}

    objective.needs_teacher = False
    return objective


def distillation_objective(ce_weight: float = 0.8, kl_weight: float = 1.0, temperature: float = 2.0,
                           label_smoothing: float = 0.0) -> Objective:
    """The distillation objective of :func:`distillation_loss` with its weights bound."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if ce_weight < 0 or kl_weight < 0:
        raise ValueError(f"ce_weight and kl_weight must be >= 0, got {ce_weight}, {kl_weight}")

    def objective(logits, labels, loss_mask, teacher_logits=None):
        if teacher_logits is None:
            raise MissingTeacherLogitsError("the distillation objective needs the teacher's logits")
        return distillation_loss(logits, teacher_logits, labels, loss_mask, ce_weight, kl_weight, temperature,
                                 label_smoothing)

    objective.needs_teacher = True
    return objective
