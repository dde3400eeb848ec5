"""Fine-tuning and distillation on the partitioner.

Core: ``losses`` (pure loss functions), ``optim`` (AdamW, schedule, decay and trainable masks), ``state``
(``TrainState`` and its axes, born sharded), ``step`` (the partitioned train and eval steps),
``student`` (a smaller decoder initialised from a teacher). Input and the run: ``targets``, ``data``,
``specaugment``, ``checkpointing``, ``metrics``, ``evaluate``, ``loop``.
"""
