"""What a spec means: the spec language (spec/), the layers, the checked network, losses,
metrics and the inference model."""
