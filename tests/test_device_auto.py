"""`--device auto` says nothing on a machine without a GPU: the CUDA fall-back line only when a GPU
seems present (or `--device cuda` was asked, which fails when CUDA is unusable)."""

from __future__ import annotations

import pytest
from conftest import SPECS

from dlc.runtime import session
from dlc.runtime.session import CUDA, resolve_device

CPU_EP = "CPUExecutionProvider"


def _broken(index):
    return False, "libcublasLt.so.13: cannot open shared object file"


def test_auto_without_a_gpu_skips_the_probe():
    def probe(index):
        raise AssertionError("the CUDA probe ran on a machine without a GPU")

    assert resolve_device("auto", [CUDA, CPU_EP], probe, gpu_seen=False) == ("cpu", 0, None)


def test_cuda_asked_without_a_gpu_still_says_why():
    with pytest.raises(Exception, match="CUDA is unusable: libcublasLt"):
        resolve_device("cuda", [CUDA, CPU_EP], _broken, gpu_seen=False)


@pytest.mark.parametrize("gpu_seen", [False, True])
def test_train_prints_the_fallback_line_only_where_a_gpu_is_seen(cli, monkeypatch, tmp_path,
                                                                 gpu_seen):
    import onnxruntime as ort

    monkeypatch.setattr(session, "gpu_present", lambda: gpu_seen)
    monkeypatch.setattr(session, "cuda_usable", _broken)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU_EP])
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "--epochs", "1")
    assert r.code == 0, r
    assert ("device auto: using CPU (libcublasLt" in r.err) == gpu_seen, r.err
