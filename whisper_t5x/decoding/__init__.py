"""One window's decoding: static options, the forced prefix, greedy and beam loops, logit rules."""
