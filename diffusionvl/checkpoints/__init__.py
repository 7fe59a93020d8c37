"""Checkpoint folders before a model is built: what a folder holds and whether it loads (`folders`, which also
names the shipped models), and the layouts of the released DiffusionVL checkpoints (`released`)."""
