"""Training: the train-step graph, optimizers, schedules, the trainer, checkpoints, run folders,
tracking, and the training features (features/)."""
