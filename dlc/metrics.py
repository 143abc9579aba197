"""Metrics over whole splits, in numpy, from the model outputs (logits or predictions)."""

from __future__ import annotations

import numpy as np


def predicted_classes(kind: str, logits: np.ndarray) -> np.ndarray:
    if kind == "binary":
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=1)


def confusion_matrix(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """rows: true class, columns: predicted class."""
    cm = np.zeros((classes, classes), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def _precision_recall_f1(cm: np.ndarray, kind: str) -> tuple[float, float, float]:
    """Macro averages for classification; the positive class for binary (as scikit-learn)."""
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    if kind == "binary":
        return float(precision[1]), float(recall[1]), float(f1[1])
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def classification_metrics(kind: str, y: np.ndarray, logits: np.ndarray) -> dict:
    """Per-sample logits [n, C] with y [n]; per-token logits [n, T, C] with y [n, T] count each
    token as one prediction (token accuracy)."""
    y = y.reshape(-1).astype(np.int64)
    if kind != "binary" and logits.ndim > 2:
        logits = logits.reshape(-1, logits.shape[-1])
    pred = predicted_classes(kind, logits)
    classes = 2 if kind == "binary" else logits.shape[1]
    cm = confusion_matrix(y, pred, classes)
    precision, recall, f1 = _precision_recall_f1(cm, kind)
    return {"accuracy": float((pred == y).mean()), "precision": precision, "recall": recall,
            "f1": f1, "confusion_matrix": cm.tolist()}


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    y, pred = y.astype(np.float64), pred.astype(np.float64)
    err = pred - y
    total = ((y - y.mean(axis=0)) ** 2).sum()
    return {"mse": float((err ** 2).mean()), "mae": float(np.abs(err).mean()),
            "r2": float(1 - (err ** 2).sum() / total) if total > 0 else 0.0}


def compute(kind: str, y: np.ndarray, outputs: np.ndarray) -> dict:
    """Every metric the task kind knows (the spec's `metrics` selects what is shown)."""
    if kind == "regression":
        return regression_metrics(y, outputs)
    return classification_metrics(kind, y, outputs)
