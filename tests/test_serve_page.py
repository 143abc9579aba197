"""The page at / of `dlc serve`, driven in node: its own script, its own form fields (parsed
from the served HTML) filled in and submitted, and a CSV upload; fetch talks to the real
server. Needs node (skipped without it) and the serve extra."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import SPECS
from test_serve import IRIS_ROW, Served, iris_model, iris_server, needs_server  # noqa: F401

pytestmark = [needs_server,
              pytest.mark.skipif(shutil.which("node") is None, reason="needs node")]


class Fields(HTMLParser):
    """The inputs and textareas of the page's first form (the one-sample form)."""

    def __init__(self):
        super().__init__()
        self.fields, self.forms = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.forms += tag == "form"
        if self.forms == 1 and tag in ("input", "textarea") and attrs.get("name"):
            self.fields.append({"name": attrs["name"], "dataset": {
                k[5:]: v for k, v in attrs.items() if k.startswith("data-")}})


def drive(server: Served, values: dict, csv: str, tmp_path: Path) -> dict:
    status, page, _ = server.request("")
    assert status == 200
    script = tmp_path / "page.js"
    script.write_text(re.search(r"<script>(.*?)</script>", page, re.S).group(1))
    parser = Fields()
    parser.feed(page)
    fields = [{**f, "value": values[f["name"]]} for f in parser.fields]
    assert [f["name"] for f in fields] == list(values)  # a field for each column, in order
    driver = Path(__file__).with_name("page_driver.js")
    done = subprocess.run(["node", str(driver), str(script), server.url, json.dumps(fields),
                           csv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_page_form_and_upload_predict(iris_server, tmp_path):
    sample = (SPECS / "data" / "iris_sample.csv").read_text()
    shown = drive(iris_server, {k: str(v) for k, v in IRIS_ROW.items()}, sample, tmp_path)
    assert [s["url"] for s in shown["sent"]] == ["predict", "predict"]
    assert [s["type"] for s in shown["sent"]] == ["application/json", "text/csv"]
    row = json.loads(shown["row"]["shown"])
    assert shown["row"]["className"] == "" and row[0]["label"] == "setosa"
    upload = json.loads(shown["upload"]["shown"])
    assert len(upload) == len(sample.strip().splitlines()) - 1


def test_page_shows_the_servers_error(iris_server, tmp_path):
    values = {k: str(v) for k, v in IRIS_ROW.items()}
    values["petal_width"] = ""  # an empty field is sent as null, not as 0
    shown = drive(iris_server, values, "a,b\n1,2\n", tmp_path)
    assert shown["row"]["className"] == "error"
    assert shown["row"]["shown"] == "422: rows[0].petal_width: expected number, found null"
    assert shown["upload"]["shown"].startswith("422: upload.csv has 2 columns")
