"""Each optional package, hidden, makes the command that needs it fail in one line naming the
extra to install (dlc.errors.optional_module), through the CLI, before any work: never a
traceback, and never a run folder left behind."""

from __future__ import annotations

import sys

import pytest
from conftest import SPECS, trained_model

IRIS = SPECS / "iris.yaml"
LAUNCHED = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
DISTRIBUTED = "--workers needs Ray Train and torch: pip install 'dlc[distributed]'"
SERVE = "dlc serve needs Starlette and uvicorn: pip install 'dlc[serve]'"

# (hidden package, the command's arguments ({tmp}: a fresh folder; {cnn}: a trained digits
# CNN), environment, exit code, the one line); each package where dlc imports it
CASES = [
    ("optuna", ["tune", IRIS, "--trials", "1"], {}, 1,
     "dlc tune needs Optuna: pip install 'dlc[tune]'"),
    ("ray", ["tune", IRIS, "--trials", "1", "--backend", "ray"], {}, 2,
     "--backend ray needs Ray Tune: pip install 'dlc[ray]'"),
    ("ray", ["train", IRIS, "--workers", "2", "--out", "{tmp}/run"], {}, 1, DISTRIBUTED),
    ("torch", ["train", IRIS, "--workers", "2", "--out", "{tmp}/run"], {}, 1, DISTRIBUTED),
    ("torch", ["train", IRIS, "--out", "{tmp}/run"], LAUNCHED, 1,
     "data-parallel training needs torch.distributed: pip install 'dlc[distributed]'"),
    ("matplotlib", ["plot", "{tmp}", "-o", "{tmp}/curves.png"], {}, 1,
     "dlc plot needs matplotlib: pip install 'dlc[plot]'"),
    ("matplotlib", ["explain", "{cnn}", SPECS / "data" / "digits_sample.csv", "-o",
                    "{tmp}/saliency"], {}, 1,
     "saliency images need matplotlib: pip install 'dlc[plot]'"),
    ("PIL", ["train", SPECS / "digits_cnn.yaml", "--set", "data.source=folder:{tmp}/images",
             "--out", "{tmp}/run"], {}, 1,
     "folder sources need Pillow: pip install 'dlc[images]'"),
    ("starlette", ["serve", "{tmp}/model.onnx"], {}, 1, SERVE),
    ("uvicorn", ["serve", "{tmp}/model.onnx"], {}, 1, SERVE),
    ("mlflow", ["train", IRIS, "--out", "{tmp}/run", "--set", "train.tracking.backend=mlflow"],
     {}, 1, "train.tracking: mlflow needs MLflow: pip install 'dlc[mlflow]'"),
    ("tensorboardX", ["train", IRIS, "--out", "{tmp}/run", "--set",
                      "train.tracking.backend=tensorboard"], {}, 1,
     "train.tracking: tensorboard needs tensorboardX: pip install 'dlc[tensorboard]'"),
]


def hide(monkeypatch, package: str) -> None:
    """Make `package` (and its loaded submodules) unimportable, as if it were not installed:
    `import package` raises ModuleNotFoundError naming it."""
    for name in [package, *(m for m in list(sys.modules) if m.startswith(package + "."))]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return trained_model(tmp_path_factory, "digits_cnn.yaml", "train.epochs=1")


@pytest.mark.parametrize("package,args,env,code,line", CASES,
                         ids=[f"{c[0]}-{c[1][0]}" + ("-launched" if c[2] else "") for c in CASES])
def test_a_missing_extra_is_one_line_naming_it(cli, monkeypatch, tmp_path, request, package,
                                               args, env, code, line):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")  # a run folder to plot
    (tmp_path / "images" / "a").mkdir(parents=True)  # a folder source: one class, one image
    (tmp_path / "images" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    cnn = request.getfixturevalue("cnn") if "{cnn}" in args else None
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    hide(monkeypatch, package)
    r = cli(*(str(a).format(tmp=tmp_path, cnn=cnn) for a in args))
    assert (r.code, r.err) == (code, f"error: {line}\n"), r
    assert not (tmp_path / "run").exists()


def test_a_broken_install_is_not_called_missing(tmp_path, monkeypatch):
    """The install hint only when the package (or a package above the module asked for) is
    absent; a package that is there but fails to import says so, naming what needed it."""
    from dlc.errors import DlcError, UsageError, optional_module

    (tmp_path / "dlc_test_broken").mkdir()
    (tmp_path / "dlc_test_broken" / "__init__.py").write_text("import dlc_test_absent_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DlcError, match=r"^thing: cannot import dlc_test_broken: No module "
                                       r"named 'dlc_test_absent_dep'$"):
        optional_module("dlc_test_broken", "install it", "thing")
    with pytest.raises(UsageError, match="^install it$"):
        optional_module("dlc_test_absent.sub", "install it", "thing", UsageError)
