"""Submission: the only importer of submitit. The DAG, resources to sbatch, status and logs."""
