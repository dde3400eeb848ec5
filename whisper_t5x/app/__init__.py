"""Applications on top of the pipeline: run configs, gin, jax.distributed, file and dataset jobs, writers, CLI, serving."""
