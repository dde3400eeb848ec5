"""Train checkpoints with orbax-checkpoint, resume onto the target shardings, and the Hugging Face export.

A checkpoint ``OUT/checkpoints/<step>/`` holds two items:

* ``state``: the whole ``TrainState`` (step, float32 parameters, optimizer
  state, PRNG key), written by every process for the shards it holds
  (``StandardSave``; orbax coordinates the processes);
* ``meta``: JSON with the data position, the model config, and every state
  leaf's path and shape, so resuming with a different model or a different
  optimizer layout (say ``--freeze_encoder`` toggled) is a named
  :class:`CheckpointMismatchError` before anything is read, not a shape error
  deep inside orbax.

Saves are asynchronous: ``save`` returns once the arrays are copied off the
devices and the files are written in the background while training goes on;
an interrupted write leaves a temporary directory that is never restored and is
cleaned on the next start. The last ``keep`` checkpoints are kept.
:func:`export_hf` writes the parameters as a ``save_pretrained`` directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

logger = logging.getLogger("whisper_t5x.training.checkpointing")

__all__ = ["CheckpointError", "CheckpointMismatchError", "TrainCheckpointer", "export_hf", "state_shapes"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written for a different model (or optimizer layout) than this run's."""


def state_shapes(state: Any) -> Dict[str, list]:
    """``{path: shape}`` of every leaf of a state (arrays or ``ShapeDtypeStruct``s)."""
    return {jax.tree_util.keystr(path): [int(d) for d in np.shape(leaf)]
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def _config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    keys = sorted(set(saved) | set(current))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


class TrainCheckpointer:
    """Saves and restores train states under ``directory`` (one orbax ``CheckpointManager``)."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), enable_async_checkpointing=bool(async_save),
                                               cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Starts writing ``state`` and ``meta`` (JSON-ready) as checkpoint ``step``; returns before the
        files are written (asynchronous saves)."""
        ocp = self._ocp
        meta = dict(meta, step=int(step), state_shapes=state_shapes(state))
        if self._manager.latest_step() == int(step):
            return  # already saved (e.g. the final step was also a save step)
        self._manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                              meta=ocp.args.JsonSave(meta)), force=True)

    def read_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
        """The ``meta`` item of checkpoint ``step`` (the latest by default)."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def check_compatible(self, meta: Mapping[str, Any], abstract_state: Any,
                         model_config: Optional[Mapping[str, Any]] = None) -> None:
        """:class:`CheckpointMismatchError` when ``meta`` was saved for another model or state layout."""
        where = f"checkpoint {meta.get('step')} in {self.directory}"
        if model_config is not None and meta.get("model_config") is not None:
            diff = _config_diff(meta["model_config"], model_config)
            if diff:
                detail = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in list(diff.items())[:6])
                raise CheckpointMismatchError(f"{where} is of a different model ({detail}); use another "
                                              "--output_dir, or the model it was trained from")
        saved = meta.get("state_shapes") or {}
        current = state_shapes(abstract_state)
        missing = sorted(set(current) - set(saved))
        extra = sorted(set(saved) - set(current))
        wrong = sorted(k for k in set(saved) & set(current) if list(saved[k]) != list(current[k]))
        if missing or extra or wrong:
            parts = []
            if wrong:
                parts.append("shapes differ: " + ", ".join(f"{k} {saved[k]} vs {current[k]}" for k in wrong[:4]))
            if missing:
                parts.append(f"not in the checkpoint: {missing[:4]}")
            if extra:
                parts.append(f"only in the checkpoint: {extra[:4]}")
            raise CheckpointMismatchError(f"{where} does not match this run's train state ("
                                          + "; ".join(parts) + "): a different model, or different frozen "
                                          "parameters (--freeze_encoder)")

    def restore(self, abstract_state: Any, step: Optional[int] = None,
                model_config: Optional[Mapping[str, Any]] = None) -> Tuple[Any, Dict[str, Any]]:
        """``(state, meta)`` of checkpoint ``step`` (the latest by default), each array placed with the
        sharding of its ``abstract_state`` leaf (``ShapeDtypeStruct``s carrying shardings)."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        meta = self.read_meta(step)
        self.check_compatible(meta, abstract_state, model_config)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                       meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def gather_params(params: Any, process_count: int = 1) -> Any:
    """The parameters as host numpy arrays (every process's shards gathered under multi-host)."""
    if process_count > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    return jax.tree_util.tree_map(np.asarray, jax.device_get(params))


def export_hf(directory: str, config: Any, params: Any, tokenizer_file: Optional[str] = None,
              generation_config: Optional[Mapping[str, Any]] = None, process_index: int = 0,
              process_count: int = 1) -> Optional[str]:
    """Writes ``params`` as a Hugging Face directory (``save_pretrained``: ``FlaxWhisperPipeline(path)``,
    transformers and CTranslate2's converter load it); returns the path on process 0, ``None`` elsewhere.

    Every process takes part in gathering; process 0 writes into a temporary
    directory and renames it over ``directory``, so a reader never sees half an export.
    """
    from whisper_t5x.checkpoints.export import save_pretrained

    host = gather_params(params, process_count)
    if process_index != 0:
        return None
    directory = os.path.abspath(directory)
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(tmp, config, host, tokenizer_file=tokenizer_file, generation_config=generation_config)
    old = directory + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(directory):
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory
