"""Launchers: local multi-process, TPU VM pods, SLURM GPU clusters."""
