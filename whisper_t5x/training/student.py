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

__all__ = ["StudentLayersError", "describe_student", "kept_decoder_layers", "student_from_teacher"]


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
