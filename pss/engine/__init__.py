"""The engine: the training loop (train), evaluation (evaluate), checkpoints (checkpoint)
and the run lifecycle both engines share, ours and mmdet's (lifecycle)."""
