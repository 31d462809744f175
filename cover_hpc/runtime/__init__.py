"""The process: environment variables (SLURM_*, RANK...) and the preemption flag."""
