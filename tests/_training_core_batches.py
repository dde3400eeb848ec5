"""A tiny TrainBatch builder for the training-core tests (the real one is training/targets.py).

Each row is ``[<|startofprev|> prompt...] forced prefix, target tokens, <|endoftext|>``, padded with
end-of-text. ``labels`` are the ids shifted left by one; ``loss_mask`` is 1 exactly where the label is a
target token or the final end-of-text.
"""

import numpy as np

from whisper_t5x.training.step import TrainBatch


def row(special, prefix, targets, prompt=()):
    """``(ids, first_target_position)`` of one decoder sequence (before shifting)."""
    prompt = [int(t) for t in prompt]
    context = ([special.sot_prev] + prompt) if prompt else []
    ids = context + list(prefix) + list(targets) + [special.eot]
    return ids, len(context) + len(prefix)


def build(features, rows, special, length):
    """TrainBatch of ``length`` decoder positions from ``[(ids, first_target_position)]``."""
    batch = len(rows)
    ids = np.full((batch, length + 1), special.eot, np.int32)
    mask = np.zeros((batch, length), np.float32)
    for b, (seq, first) in enumerate(rows):
        if len(seq) > length + 1:
            raise ValueError(f"row {b} has {len(seq)} tokens, more than {length + 1}")
        ids[b, :len(seq)] = seq
        # label i is ids[i + 1]: a target when first <= i + 1 < len(seq)
        mask[b, first - 1:len(seq) - 1] = 1.0
    return TrainBatch(np.asarray(features, np.float32), ids[:, :-1], ids[:, 1:], mask)
