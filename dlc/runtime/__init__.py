"""Running models in onnxruntime: provider choice, sessions, the train loop, checkpoints."""
