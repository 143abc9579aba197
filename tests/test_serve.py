"""`dlc serve`: the real server in a subprocess, talked to over HTTP with urllib; the batcher
in-process."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import ROOT, SPECS, trained_model

# the server's tests need the serve extra; the batcher, the listening socket, the help text and
# the missing-extra message do not, and run without it
needs_server = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn")),
    reason="needs pip install 'dlc[serve]'")

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: no proxy
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Served:
    """`dlc serve MODEL --port 0` in a subprocess; the address from the line it prints."""

    def __init__(self, model, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dlc", "serve", str(model), "--port", "0", "--device", "cpu",
             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        found = re.search(r"http://\S+/", line)
        if not found:
            self.proc.kill()
            raise AssertionError(f"no address printed: {line!r} {self.proc.stderr.read()!r}")
        self.url = found.group()

    def request(self, path: str, body: bytes | None = None,
                ctype: str = "application/json") -> tuple[int, object, str]:
        """(status, parsed JSON or None, content type) of GET (no body) or POST."""
        req = urllib.request.Request(self.url + path, data=body,
                                     headers={"Content-Type": ctype} if body is not None else {})
        try:
            with OPENER.open(req, timeout=60) as r:
                status, kind, raw = r.status, r.headers.get("content-type", ""), r.read()
        except urllib.error.HTTPError as e:
            status, kind, raw = e.code, e.headers.get("content-type", ""), e.read()
        return status, json.loads(raw) if "json" in kind else raw.decode(), kind

    def post(self, body) -> tuple[int, object]:
        status, data, _ = self.request("predict", json.dumps(body).encode())
        return status, data

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory):
    return trained_model(tmp_path_factory, "iris.yaml", "train.epochs=20")


@pytest.fixture(scope="module")
def penguins_model(tmp_path_factory):
    return trained_model(tmp_path_factory, "penguins_wide_deep.yaml", "train.epochs=3")


@pytest.fixture(scope="module")
def iris_server(iris_model):
    server = Served(iris_model, "--max-rows", "8")
    yield server
    server.close()


def expected_json(cli, model, rows_csv, tmp_path) -> list[dict]:
    """What `dlc predict -o x.json` writes for the rows of a CSV file."""
    out = tmp_path / "expected.json"
    r = cli("predict", model, rows_csv, "-o", out, "--device", "cpu")
    assert r.code == 0, r
    return json.loads(out.read_text())


def assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) and [sorted(g) for g in got] == [sorted(w) for w in want]
    for g, w in zip(got, want):
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-7) if isinstance(value, float) \
                else g[key] == value, (key, g, w)


def csv_records(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_server
def test_health_schema_and_page(iris_server):
    status, health, _ = iris_server.request("health")
    assert status == 200 and health["model"] == "iris"
    assert health["inputs"]["input"]["features"] == list(IRIS_ROW)
    assert health["outputs"] == ["logits", "probabilities", "class_index"]
    status, schema, _ = iris_server.request("schema")
    row = schema["properties"]["rows"]["items"]
    assert status == 200 and row["required"] == list(IRIS_ROW)
    assert row["properties"]["sepal_length"] == {"type": "number"}
    status, page, kind = iris_server.request("")
    assert status == 200 and kind.startswith("text/html")
    for name in IRIS_ROW:  # one form field per column, posted as JSON rows to predict
        assert f'name="{name}"' in page
    assert 'fetch("predict"' in page and "JSON.stringify({rows: [row]})" in page
    assert '"text/csv"' in page and 'type="file"' in page  # the CSV upload
    assert "http" not in page.split("<script>")[1]  # no external assets


@needs_server
def test_predict_equals_dlc_predict(cli, iris_model, iris_server, tmp_path):
    """Rows as JSON records, as input arrays and as an uploaded CSV: the values of `dlc
    predict` on the same rows."""
    sample = SPECS / "data" / "iris_sample.csv"
    want = expected_json(cli, iris_model, sample, tmp_path)
    records = [{k: float(v) for k, v in r.items() if k in IRIS_ROW} for r in csv_records(sample)]
    status, got = iris_server.post({"rows": records})
    assert status == 200, got
    assert_same_predictions(got["predictions"], want)
    status, got = iris_server.post({"inputs": {"input": [list(r.values()) for r in records]}})
    assert status == 200, got
    assert_same_predictions(got["predictions"], want)
    status, got, _ = iris_server.request("predict", sample.read_bytes(), "text/csv")
    assert status == 200, got
    assert_same_predictions(got["predictions"], want)


@needs_server
def test_inputs_model_predicts_as_dlc_predict(cli, penguins_model, tmp_path):
    """Two named inputs (measurements, and species/island as categories): JSON records by
    column name, per-input arrays, and a CSV upload give dlc predict's values."""
    rows = csv_records(SPECS / "data" / "penguins.csv")[:6]
    rows[1]["island"] = "Atlantis"  # unseen category: the unknown id, as dlc predict maps it
    sample = tmp_path / "rows.csv"
    sample.write_text(",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n"
                                                         for r in rows))
    want = expected_json(cli, penguins_model, sample, tmp_path)
    numeric = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    records = [{**{k: float(r[k]) for k in numeric}, "species": r["species"],
                "island": r["island"]} for r in rows]
    server = Served(penguins_model)
    try:
        status, health, _ = server.request("health")
        assert health["inputs"]["categories"]["kind"] == "category"
        status, got = server.post({"rows": records})
        assert status == 200, got
        assert_same_predictions(got["predictions"], want)
        arrays = {"numeric": [[r[k] for k in numeric] for r in records],
                  "categories": [[r["species"], r["island"]] for r in records]}
        status, got = server.post({"inputs": arrays})
        assert status == 200, got
        assert_same_predictions(got["predictions"], want)
        status, got, _ = server.request("predict", sample.read_bytes(), "text/csv")
        assert status == 200 and got["predictions"] == server.post({"rows": records})[1][
            "predictions"]
        status, got = server.post({"inputs": {**arrays, "numeric": arrays["numeric"][:2]}})
        assert status == 422 and "same number of samples" in got["error"]
    finally:
        server.close()


BAD = [  # (body, content type, status, part of the error)
    (b'{"rows": [{"sepal_length": "wide", "sepal_width": 3.5, "petal_length": 1.4, '
     b'"petal_width": 0.2}]}', "application/json", 422,
     'rows[0].sepal_length: expected number, found "wide"'),
    (json.dumps({"rows": [{**IRIS_ROW, "colour": "blue"}]}).encode(), "application/json", 422,
     "rows[0]: unknown field 'colour'"),
    (json.dumps({"rows": [{"sepal_length": 5.0}]}).encode(), "application/json", 422,
     "missing field 'sepal_width'"),
    (json.dumps({"inputs": {"input": [[1.0, 2.0, 3.0]]}}).encode(), "application/json", 422,
     "inputs.input[0]: expected 4 values, found 3"),
    (json.dumps({"rows": [IRIS_ROW] * 9}).encode(), "application/json", 413,
     "9 rows in one request; the server takes at most 8"),
    (b'{"rows": [{"sepal_length": NaN, "sepal_width": 3.5, "petal_length": 1.4, '
     b'"petal_width": 0.2}]}', "application/json", 422, "rows[0].sepal_length: non-finite"),
    (b'{"rows": [{"sepal_length": 1e999, "sepal_width": 3.5, "petal_length": 1.4, '
     b'"petal_width": 0.2}]}', "application/json", 422, "non-finite value inf"),
    (json.dumps({"rows": [IRIS_ROW], "inputs": {}}).encode(), "application/json", 422,
     'give "rows" or "inputs", not both'),
    (json.dumps({"rows": []}).encode(), "application/json", 422, "expected at least 1"),
    (b"{rows: ", "application/json", 400, "the body is not JSON"),
    (b"a,b\n1,2\n", "text/csv", 422, "upload.csv has 2 columns; the model expects 4"),
]


@needs_server
@needs_server
def test_text_model_serves_raw_text_as_dlc_predict(cli, tmp_path_factory, tmp_path):
    """A text model's rows are raw strings, tokenised by the model's own graph: the values of
    `dlc predict` on the same texts (an empty one, an unseen word, non-ASCII letters too)."""
    model = trained_model(tmp_path_factory, "text_classifier.yaml", "train.epochs=1")
    texts = ["a small furry animal, kept as a pet", "", "zxqvw crêpe ÉCOLE!"]
    sample = tmp_path / "texts.csv"
    sample.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    want = expected_json(cli, model, sample, tmp_path)
    server = Served(model)
    try:
        status, got = server.post({"rows": texts})
        assert status == 200, got
        assert_same_predictions(got["predictions"], want)
        status, got = server.post({"rows": [3]})
        assert status == 422 and "rows[0]" in got["error"], got
    finally:
        server.close()


@needs_server
def test_column_model_serves_raw_rows_with_missing_cells_as_dlc_predict(cli, tmp_path_factory,
                                                                        tmp_path):
    """input.columns (specs/penguins_columns.yaml): rows of raw cells, strings and null or NaN
    for a missing one, filled and encoded by the model's graph; /schema names the raw columns."""
    model = trained_model(tmp_path_factory, "penguins_columns.yaml", "train.epochs=3")
    rows = csv_records(SPECS / "data" / "penguins_full.csv")[:5]  # row 4: NA cells
    rows[1]["island"] = "Atlantis"  # unseen: the out-of-vocabulary column
    sample = tmp_path / "rows.csv"
    sample.write_text(",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n"
                                                         for r in rows))
    want = expected_json(cli, model, sample, tmp_path)
    numbers = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
    records = [{k: (None if v == "NA" else float(v) if k in numbers else v)
                for k, v in r.items() if k != "species"} for r in rows]
    server = Served(model)
    try:
        _, schema, _ = server.request("schema")
        props = schema["properties"]["rows"]["items"]["properties"]
        assert props["island"]["type"] == ["string", "integer", "null"]
        assert props["body_mass_g"]["type"] == ["number", "null"]
        status, got = server.post({"rows": records})
        assert status == 200, got
        assert_same_predictions(got["predictions"], want)
        nan = json.dumps({"rows": records}).replace("null", "NaN", 1).encode()
        status, got, _ = server.request("predict", nan)
        assert status == 200 and got["predictions"] == server.post({"rows": records})[1][
            "predictions"]
        status, got, _ = server.request("predict", sample.read_bytes(), "text/csv")
        assert status == 200, got
        assert_same_predictions(got["predictions"], want)
        status, got = server.post({"rows": [{**records[0], "island": ["x"]}]})
        assert status == 422 and "rows[0].island" in got["error"], got
    finally:
        server.close()


@pytest.mark.parametrize("body,ctype,status,message", BAD)
def test_bad_requests_get_a_4xx_and_one_line(iris_server, body, ctype, status, message):
    got_status, got, kind = iris_server.request("predict", body, ctype)
    assert got_status == status and kind == "application/json", got
    assert set(got) == {"error"} and message in got["error"] and "\n" not in got["error"]


@needs_server
def test_unknown_route_and_method_answer_json(iris_server):
    assert iris_server.request("nothing")[:2] == (404, {"error": "Not Found"})
    assert iris_server.request("predict")[0] == 405


@needs_server
def test_concurrent_requests_share_runs(iris_model):
    """24 clients at once, each with its own row: fewer onnxruntime runs than requests (the
    /health counters), and each client gets the prediction of its own row."""
    from dlc.runtime.infer import load_model, prediction_rows

    clients = 24
    rows = [{**IRIS_ROW, "petal_length": 1.0 + 0.25 * k, "petal_width": 0.1 * k}
            for k in range(clients)]
    model = load_model(iris_model)
    want = [prediction_rows(model, model.run(np.asarray([list(r.values())], np.float32)))[0]
            for r in rows]
    server = Served(iris_model, "--max-batch", str(clients), "--max-wait-ms", "2000")
    try:
        before = server.request("health")[1]
        barrier, got = threading.Barrier(clients), [None] * clients

        def client(k):
            barrier.wait()
            got[k] = server.post({"rows": [rows[k]]})

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        after = server.request("health")[1]
    finally:
        server.close()
    for k in range(clients):
        assert got[k][0] == 200, got[k]
        assert_same_predictions(got[k][1]["predictions"], [want[k]])
    assert after["requests"] - before["requests"] == clients
    runs = after["runs"] - before["runs"]
    assert 1 <= runs < clients // 2 and after["largest_run"] > 2, after


def test_batcher_merges_splits_and_isolates_failures():
    """In-process: five queued requests, at most 3 rows a run -> runs of 3 and 2 (the last
    waits out max_wait); each gets its own rows back; a request whose rows make the run
    fail gets the error, its neighbours their results; differently shaped samples never
    share a run."""
    from dlc.data.multi import Columns
    from dlc.commands.serve.batcher import Batcher

    calls = []

    def run(feed):
        calls.append(len(feed))
        if (feed["input"] < 0).any():
            raise ValueError("negative")
        return {"y": feed["input"] * 2}

    async def scenario():
        batcher = Batcher(run, max_batch=3, max_wait=0.05)
        worker = asyncio.create_task(batcher.work())
        feeds = [Columns({"input": np.full((1, 2), k, np.float32)}) for k in range(5)]
        results = await asyncio.gather(*(batcher.predict(f) for f in feeds))
        assert calls == [3, 2] and batcher.stats["runs"] == 2
        assert all((r["y"] == 2 * k).all() and r["y"].shape == (1, 2)
                   for k, r in enumerate(results))
        calls.clear()
        bad = Columns({"input": np.full((1, 2), -1, np.float32)})
        results = await asyncio.gather(batcher.predict(feeds[1]), batcher.predict(bad),
                                       batcher.predict(feeds[2]), return_exceptions=True)
        assert isinstance(results[1], ValueError) and (results[2]["y"] == 4).all()
        assert calls == [3, 1, 1, 1]  # the merged run, then each request alone
        calls.clear()
        wide = Columns({"input": np.zeros((1, 3), np.float32)})
        await asyncio.gather(batcher.predict(feeds[1]), batcher.predict(wide))
        assert calls == [1, 1]
        worker.cancel()

    asyncio.run(scenario())



@needs_server
def test_serve_errors_before_listening(cli, iris_model, tmp_path):
    r = cli("serve", tmp_path / "none.onnx")
    assert r.code == 1 and "model file not found" in r.err
    r = cli("serve", iris_model, "--max-batch", "0")
    assert r.code == 2 and "--max-batch" in r.err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = cli("serve", iris_model, "--port", str(taken.getsockname()[1]), "--device", "cpu")
    assert r.code == 1 and "cannot listen on 127.0.0.1:" in r.err and len(r.err.splitlines()) == 1


def test_help_loads_no_server_library():
    code = ("import sys; sys.argv = ['dlc', 'serve', '--help']\nfrom dlc.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('uvicorn', 'starlette', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60).stdout
    assert "--max-wait-ms" in out and out.strip().endswith("[]")


def test_listening_socket_is_tcp():
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket's
    protocol says TCP; without it every response waited ~40 ms (Nagle vs delayed ACK)."""
    from dlc.commands.serve import listen

    with listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
