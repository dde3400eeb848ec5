"""A distillation student initialised from its teacher: the whole encoder, some decoder layers.

The decoder layers kept are spread as evenly as possible over the teacher's,
the first and the last always among them (``round(linspace(0, T - 1, N))``):
6 -> 2 keeps ``[0, 5]``, 32 -> 2 keeps ``[0, 31]``, 4 -> 3 keeps ``[0, 2, 3]``,
32 -> 4 keeps ``[0, 10, 21, 31]``. A one-layer student keeps the last layer,
the one that feeds the output projection. Everything else (token and
positional tables, final layer norm) is copied.
"""

from __future__ import annotations

from typing import Mapping, Tuple

import numpy as np

from whisper_t5x.checkpoints import layout
from whisper_t5x.model.config import WhisperConfig

__all__ = ["ENCODER_FIELDS", "StudentLayersError", "describe_student", "encoder_is_teachers", "kept_decoder_layers",
           "student_from_teacher"]

# The config fields the encoder's output depends on (with its parameters).
ENCODER_FIELDS = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                  "max_source_positions", "layer_norm_eps")


class StudentLayersError(ValueError):
    """The student asks for fewer than one decoder layer, or more than its teacher has."""


def kept_decoder_layers(teacher_layers: int, student_layers: int) -> Tuple[int, ...]:
    """Indices of the teacher's decoder layers a student of ``student_layers`` keeps (ascending)."""
    if not isinstance(student_layers, (int, np.integer)) or student_layers < 1:
        raise StudentLayersError(f"a student needs at least one decoder layer, got {student_layers!r}")
    if student_layers > teacher_layers:
        raise StudentLayersError(
            f"the student asks for {student_layers} decoder layers but its teacher has only {teacher_layers}")
    if student_layers == 1:
        return (teacher_layers - 1,)
    spots = np.linspace(0, teacher_layers - 1, int(student_layers))
    return tuple(int(i) for i in np.floor(spots + 0.5))


def student_from_teacher(teacher_config: WhisperConfig, teacher_params: Mapping,
                         num_decoder_layers: int) -> Tuple[WhisperConfig, dict]:
    """``(student_config, student_params)``: the teacher's encoder and the kept decoder layers.

    ``teacher_params`` may be in the loop or the scan layout (numpy or jax);
    the student's come back in the same layout, sharing the teacher's arrays
    where no copy is needed. Alignment heads of dropped layers are dropped,
    the others renumbered.
    """
    kept = kept_decoder_layers(teacher_config.decoder_layers, num_decoder_layers)
    scanned = layout.is_scan_layout(teacher_params)
    loop = layout.to_loop_layout(teacher_params)
    decoder_layers = loop["decoder"]["layers"]
    if len(decoder_layers) != teacher_config.decoder_layers:
        raise StudentLayersError(f"the teacher's parameters hold {len(decoder_layers)} decoder layers, its config "
                                 f"says {teacher_config.decoder_layers}")
    decoder = dict(loop["decoder"], layers={str(new): decoder_layers[str(old)] for new, old in enumerate(kept)})
    params: dict = dict(loop, decoder=decoder)
    position = {old: new for new, old in enumerate(kept)}
    heads = tuple((position[layer], head) for layer, head in teacher_config.alignment_heads if layer in position)
    config = teacher_config.replace(decoder_layers=len(kept), alignment_heads=heads)
    if scanned:
        params = layout.to_scan_layout(params)
    return config, params


def describe_student(teacher_config: WhisperConfig, num_decoder_layers: int) -> str:
    """One line for logs: which teacher decoder layers the student keeps."""
    kept = kept_decoder_layers(teacher_config.decoder_layers, num_decoder_layers)
    return (f"student: encoder copied ({teacher_config.encoder_layers} layers), decoder layers "
            f"{list(kept)} of {teacher_config.decoder_layers}")


def encoder_is_teachers(student_config: WhisperConfig, student_params: Mapping, teacher_config: WhisperConfig,
                        teacher_params: Mapping) -> bool:
    """True when the student's encoder computes exactly the teacher's: the same encoder configuration and
    the same encoder parameters, bit for bit (same tree, shapes, dtypes and values).

    This is the condition under which a distillation step may feed the
    student's encoder output to the teacher's decoder (``step.Teacher(
    share_encoder=True)``), as long as the encoder stays frozen. It holds
    for a student made by :func:`student_from_teacher` and kept frozen; it
    fails for a student loaded from another checkpoint, or one whose encoder
    was trained before a resume. Parameters may be numpy or (sharded) jax
    arrays, in either layout (both trees must use the same one).
    """
    import jax
    import jax.numpy as jnp

    if any(getattr(student_config, f) != getattr(teacher_config, f) for f in ENCODER_FIELDS):
        return False
    s_leaves, s_tree = jax.tree_util.tree_flatten(student_params["encoder"])
    t_leaves, t_tree = jax.tree_util.tree_flatten(teacher_params["encoder"])
    if s_tree != t_tree or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(s_leaves, t_leaves)):
        return False
    same = jax.jit(lambda a, b: jnp.all(jnp.stack([jnp.array_equal(x, y) for x, y in zip(a, b)])))(
        s_leaves, t_leaves)
    # a replicated scalar: every process reads its own copy (the arrays may span processes)
    return bool(np.asarray(same.addressable_data(0)))
