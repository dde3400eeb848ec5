"""Fine-tuning and distillation on the partitioner: losses, optimizer, train state, train step, student init.

Modules: ``losses`` (pure loss functions), ``optim`` (AdamW, schedule, masks),
``state`` (``TrainState`` and its axes), ``step`` (the partitioned train and
eval steps), ``student`` (a smaller decoder initialised from a teacher).
"""
