"""dlc: a declarative deep-learning compiler."""

__version__ = "0.1.0"
