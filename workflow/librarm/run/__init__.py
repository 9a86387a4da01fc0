"""Run machinery: params (schema, typed settings), paths, I/O, launch, tracking, provenance, warm jobs, repro."""
