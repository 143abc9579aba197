"""Training features: pruning, fine-tuning from another model, distillation, class imbalance,
and the checks of their options that need no data."""
