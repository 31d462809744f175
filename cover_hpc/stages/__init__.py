"""The stages: prepare, train, validate, select, infer, report. A run folder in, a record out."""
