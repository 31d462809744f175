"""Files: paths, atomic writes, checkpoints, caches, training data, locks, run folders and records."""
