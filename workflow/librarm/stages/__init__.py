"""One module per DAG phase (named as the phase); a step function each for `librarm stage`."""
