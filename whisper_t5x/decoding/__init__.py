"""One window's decoding: model-free loops (greedy, beam) over a step function, the logit rules, and
the Whisper glue that builds the step from the model (``generate``)."""
