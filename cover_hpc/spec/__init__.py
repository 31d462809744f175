"""The experiment spec: schema, YAML loading, checks, sweep expansion and run ids.

A leaf: it imports nothing else of cover_hpc. Metric and checkpoint names are spec vocabulary
(:mod:`cover_hpc.spec.vocab`)."""
