"""The optimizer: AdamW with a decay mask, warmup then decay, global-norm clipping, frozen parameters.

:func:`make_optimizer` returns an :class:`Optimizer`: the optax transformation
plus what the train step must know about it (which parameters train, the
learning-rate schedule for logging). Frozen parameters sit under
``optax.multi_transform``'s ``"frozen"`` label: the AdamW branch masks them out,
so they hold no ``mu``/``nu`` arrays at all, and the train step never computes
their gradients.

Weight decay (decoupled, AdamW) applies to matrices only: dense and convolution
``kernel``s. Not to biases and layer norms (the usual mask), and not to the
embedding tables either: decoupled decay shrinks every row of a table each
step, including the rows of tokens a fine-tuning set never shows (other
languages, rare words), which would erode the tied token table for the rest of
the vocabulary; the positional tables are additive offsets like biases.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "DECAYS",
    "DEFAULT_FROZEN",
    "FROZEN",
    "TRAINABLE",
    "Optimizer",
    "OptimizerConfig",
    "OptimizerConfigError",
    "decay_mask",
    "learning_rate_schedule",
    "make_optimizer",
    "path_name",
    "trainable_mask",
]

DECAYS = ("linear", "cosine", "constant")
TRAINABLE = "trainable"
FROZEN = "frozen"


class OptimizerConfigError(ValueError):
    """An optimizer setting is out of range or inconsistent."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its schedule.

    The learning rate rises linearly from 0 to ``learning_rate`` over
    ``warmup_steps``, then decays (``linear`` or ``cosine``) to
    ``end_learning_rate_ratio * learning_rate`` at ``total_steps``, or stays
    (``constant``). ``max_grad_norm`` <= 0 turns clipping off.
    ``accumulation_steps`` microbatches make one update (the train step splits
    the batch; see ``training.step.make_train_step``).
    """

    learning_rate: float = 1e-5
    warmup_steps: int = 0
    decay: str = "linear"
    total_steps: Optional[int] = None
    end_learning_rate_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    accumulation_steps: int = 1

    def __post_init__(self):
        problems = []
        if not self.learning_rate > 0:
            problems.append(f"learning_rate={self.learning_rate} must be positive")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.decay not in DECAYS:
            problems.append(f"decay={self.decay!r} must be one of {DECAYS}")
        if self.decay != "constant":
            if self.total_steps is None:
                problems.append(f"decay={self.decay!r} needs total_steps")
            elif self.total_steps <= self.warmup_steps:
                problems.append(f"total_steps={self.total_steps} must exceed warmup_steps={self.warmup_steps}")
        if not 0.0 <= self.end_learning_rate_ratio <= 1.0:
            problems.append(f"end_learning_rate_ratio={self.end_learning_rate_ratio} must be in [0, 1]")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay} must be >= 0")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            problems.append(f"b1={self.b1}, b2={self.b2} must be in [0, 1)")
        if not self.eps > 0:
            problems.append(f"eps={self.eps} must be positive")
        if self.accumulation_steps < 1:
            problems.append(f"accumulation_steps={self.accumulation_steps} must be >= 1")
        if problems:
            raise OptimizerConfigError("bad optimizer config: " + "; ".join(problems))


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """``step -> learning rate`` for ``config`` (the step counts updates, not microbatches)."""
    peak = config.learning_rate
    end = peak * config.end_learning_rate_ratio
    if config.decay == "constant":
        after = optax.constant_schedule(peak)
    else:
        steps = config.total_steps - config.warmup_steps
        if config.decay == "linear":
            after = optax.linear_schedule(peak, end, steps)
        else:
            after = optax.cosine_decay_schedule(peak, steps, alpha=config.end_learning_rate_ratio)
    if not config.warmup_steps:
        return after
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def path_name(path) -> str:
    """``("decoder", "layers", "0", "fc1", "kernel")``-style key path as ``decoder/layers/0/fc1/kernel``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def decay_mask(params: Any) -> Any:
    """``True`` for dense and convolution kernels, ``False`` for biases, layer norms and embeddings."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path).endswith("kernel"), params)


#: Frozen unless asked otherwise: the encoder's positional table is a fixed sinusoid in openai-whisper (a
#: buffer) and has ``requires_grad=False`` in transformers; training it would leave both formats.
DEFAULT_FROZEN = ("encoder/embed_positions",)


def trainable_mask(params: Any, freeze_encoder: bool = False, frozen: Sequence[str] = DEFAULT_FROZEN) -> Any:
    """Params-shaped bool tree: ``False`` under any of the ``frozen`` prefixes (``"encoder/embed_positions"``,
    ``"decoder/embed_tokens"`` ...), and under ``"encoder"`` with ``freeze_encoder``. A prefix that matches
    no parameter is an :class:`OptimizerConfigError`."""
    frozen = tuple(p.strip("/") for p in frozen) + (("encoder",) if freeze_encoder else ())
    names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    unknown = [p for p in frozen if not any(n == p or n.startswith(p + "/") for n in names)]
    if unknown:
        raise OptimizerConfigError(f"frozen prefixes {unknown} match no parameter")

    def is_trainable(path, _):
        name = path_name(path)
        return not any(name == p or name.startswith(p + "/") for p in frozen)

    return jax.tree_util.tree_map_with_path(is_trainable, params)


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizer:
    """An optax transformation with the facts the train step needs.

    ``trainable`` is a params-shaped tree of Python bools (``None``: all train);
    ``schedule`` maps an update count to the learning rate (for logging).
    """

    tx: optax.GradientTransformation
    config: OptimizerConfig
    schedule: Callable[[Any], Any]
    trainable: Any = None

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def update(self, grads: Any, opt_state: Any, params: Any):
        return self.tx.update(grads, opt_state, params)

    def learning_rate(self, step: Any) -> Any:
        """The learning rate used by update number ``step`` (0-based)."""
        return self.schedule(step)

    def is_trainable(self, params: Any) -> Any:
        """Params-shaped bool tree (all ``True`` when nothing is frozen)."""
        if self.trainable is None:
            return jax.tree_util.tree_map(lambda _: True, params)
        return self.trainable


def _adamw(config: OptimizerConfig, schedule) -> optax.GradientTransformation:
    parts = []
    if config.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def make_optimizer(config: OptimizerConfig, params: Any, trainable: Any = None) -> Optimizer:
    """AdamW for ``params`` (arrays or shapes); ``trainable`` a params-shaped bool tree or None.

    Clipping uses the global norm of the trainable gradients only.
    """
    schedule = learning_rate_schedule(config)
    adamw = _adamw(config, schedule)
    if trainable is None:
        return Optimizer(adamw, config, schedule, None)
    flags = jax.tree_util.tree_leaves(trainable)
    if jax.tree_util.tree_structure(trainable) != jax.tree_util.tree_structure(params):
        raise OptimizerConfigError("trainable must be a bool tree with the structure of params")
    if not all(isinstance(f, (bool, jnp.bool_)) or f in (0, 1) for f in flags):
        raise OptimizerConfigError("trainable leaves must be Python bools")
    if not any(flags):
        raise OptimizerConfigError("every parameter is frozen: nothing to train")
    trainable = jax.tree_util.tree_map(bool, trainable)
    if all(jax.tree_util.tree_leaves(trainable)):
        return Optimizer(adamw, config, schedule, None)
    labels = jax.tree_util.tree_map(lambda t: TRAINABLE if t else FROZEN, trainable)
    tx = optax.multi_transform({TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, labels)
    return Optimizer(tx, config, schedule, trainable)
