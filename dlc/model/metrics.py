"""Metrics over whole splits, in numpy, from the model outputs (logits or predictions)."""

from __future__ import annotations

import numpy as np

from dlc.model.names import class_count


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


def confusion(kind: str, y: np.ndarray, logits: np.ndarray,
              into: np.ndarray | None = None) -> np.ndarray:
    """The confusion matrix of per-sample logits [n, C] with y [n], or of per-token logits
    [n, T, C] with y [n, T], each token counted as one prediction (token accuracy); added to
    `into` in place when given."""
    y = y.reshape(-1).astype(np.int64)
    if kind != "binary" and logits.ndim > 2:
        logits = logits.reshape(-1, logits.shape[-1])
    classes = class_count(kind, logits.shape[1])
    cm = np.zeros((classes, classes), np.int64) if into is None else into
    np.add.at(cm, (y, predicted_classes(kind, logits)), 1)
    return cm


def confusion_metrics(kind: str, cm: np.ndarray) -> dict:
    precision, recall, f1 = _precision_recall_f1(cm, kind)
    return {"accuracy": float(np.trace(cm) / cm.sum()), "precision": precision,
            "recall": recall, "f1": f1, "confusion_matrix": cm.tolist()}


def classification_metrics(kind: str, y: np.ndarray, logits: np.ndarray) -> dict:
    return confusion_metrics(kind, confusion(kind, y, logits))


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    running = Running("regression")
    running.add(y, pred)
    return running.result()


class Running:
    """One output's metrics summed batch by batch, so a training epoch keeps no logits and no
    targets: the confusion matrix (classification: the metrics come out exactly as from all
    logits at once) or the squared and absolute error sums (regression), with the targets'
    count, mean and sum of squared deviations combined per batch (Chan et al.'s pairwise
    update) for R²'s total sum of squares."""

    def __init__(self, kind: str):
        self.kind, self.cm, self.sq, self.abs, self.count = kind, None, 0.0, 0.0, 0
        self.rows, self.mean, self.m2 = 0, 0.0, 0.0  # of the targets, per column

    def add(self, y: np.ndarray, outputs: np.ndarray) -> None:
        if self.kind != "regression":
            self.cm = confusion(self.kind, y, outputs, self.cm)
            return
        if not len(y):
            return
        y = y.astype(np.float64)
        err = outputs.astype(np.float64) - y
        self.sq += float((err ** 2).sum())
        self.abs += float(np.abs(err).sum())
        self.count += err.size
        mean, rows = y.mean(axis=0), self.rows + len(y)
        delta = mean - self.mean
        self.m2 = self.m2 + ((y - mean) ** 2).sum(axis=0) + delta ** 2 * self.rows * len(y) / rows
        self.mean, self.rows = self.mean + delta * len(y) / rows, rows

    def result(self) -> dict:
        """Every metric the task kind knows."""
        if self.kind != "regression":
            return confusion_metrics(self.kind, self.cm)
        total = float(np.sum(self.m2))
        return {"mse": self.sq / self.count, "mae": self.abs / self.count,
                "r2": 1 - self.sq / total if total > 0 else 0.0}


def compute(kind: str, y: np.ndarray, outputs: np.ndarray) -> dict:
    """Every metric the task kind knows (the spec's `metrics` selects what is shown)."""
    if kind == "regression":
        return regression_metrics(y, outputs)
    return classification_metrics(kind, y, outputs)


def per_class_report(cm, labels: list[str] | None = None, top: int = 5) -> dict:
    """Per-class precision/recall/F1/support from a confusion matrix (rows: true, columns:
    predicted), as scikit-learn's classification_report (0 where undefined), and the `top` most
    confused (true, predicted) pairs off the diagonal, most frequent first."""
    cm = np.asarray(cm, dtype=np.int64)
    names = list(labels) if labels and len(labels) == len(cm) else [str(i) for i in range(len(cm))]
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    classes = [{"class": names[i], "precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(cm[i].sum())} for i in range(len(cm))]
    off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm))
           if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    confused = [{"true": names[i], "predicted": names[j], "count": n} for n, i, j in off[:top]]
    return {"classes": classes, "confused": confused}


def render_per_class(report: dict) -> list[str]:
    """The per-class table and the most confused pairs as text lines."""
    width = max([len(c["class"]) for c in report["classes"]] + [5])
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    lines += [f"{c['class']:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}"
              f"  {c['support']:7d}" for c in report["classes"]]
    if report["confused"]:
        lines.append("most confused (true -> predicted: count):")
        lines += [f"  {c['true']} -> {c['predicted']}: {c['count']}" for c in report["confused"]]
    return lines
