"""Knowledge distillation against the same student trained alone (the README's figure).

The teacher is specs/digits_cnn.yaml trained for 8 epochs; the student a 64 -> 32 -> 10 MLP
(10 epochs, Adam 0.01), trained with train.seed 0..R-1 alone and with the teacher (T 4,
alpha 0.7). Prints one JSON line (test accuracies of every run and their means; a summary on
stderr).

    .venv/bin/python bench/distill.py [--repeats 5] [--teacher-epochs 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlc.train.run import train  # noqa: E402
from dlc.model.spec import load_spec  # noqa: E402

STUDENT = ROOT / "bench" / "specs" / "digits_student.yaml"


def test_accuracy(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["test"]["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = train(load_spec(ROOT / "specs" / "digits_cnn.yaml",
                                  [f"train.epochs={args.teacher_epochs}"]),
                        str(tmp / "teacher"), quiet=True)
        kd = f"train.distill={{teacher: {teacher / 'model.onnx'}, temperature: 4, alpha: 0.7}}"
        alone, taught = [], []
        for seed in range(args.repeats):
            for runs, extra in ((alone, []), (taught, [kd])):
                spec = load_spec(STUDENT, [f"train.seed={seed}", *extra])
                out = tmp / f"{len(extra)}-{seed}"
                runs.append(test_accuracy(train(spec, str(out), quiet=True)))
        result = {"teacher": test_accuracy(teacher), "alone": alone, "taught": taught,
                  "alone_mean": sum(alone) / len(alone), "taught_mean": sum(taught) / len(taught)}
    print(f"teacher {result['teacher']:.4f}; student alone {result['alone_mean']:.4f}, "
          f"with the teacher {result['taught_mean']:.4f} (mean of {args.repeats} seeds)",
          file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
