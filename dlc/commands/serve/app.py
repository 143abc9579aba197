"""The Starlette application of `dlc serve`: routes over one loaded model.

GET /health   the model (name, inputs, outputs) and the batcher's counters (requests, runs)
GET /schema   the JSON Schema of a /predict body, from the model's own inputs
POST /predict JSON (`{"rows": [...]}` or `{"inputs": {...}}`) or a CSV file (text/csv, read as
              `dlc predict` reads one) in; `{"predictions": [...]}` out, one record per sample
              with the columns of `dlc predict -o x.json`; a bad request gets a 4xx and
              `{"error": "<one line>"}`
GET /         a page to try the model from a browser (one row by form, or a CSV upload)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from dlc.commands.serve.batcher import Batcher
from dlc.commands.serve.page import render_page
from dlc.commands.serve.payload import (RequestError, check, fields_of, limit_rows, request_schema,
                                        rows_in, to_feed)
from dlc.data.multi import Columns
from dlc.errors import DlcError
from dlc.runtime.infer import predict_inputs, prediction_rows


class Server:
    """One model behind the routes: its request schema, validator and batcher."""

    def __init__(self, model, max_batch: int, max_wait_ms: float, max_rows: int):
        from jsonschema import Draft202012Validator

        self.model, self.max_rows = model, max_rows
        self.fields = fields_of(model)
        self.schema = request_schema(self.fields, model.spec["name"], max_rows)
        self.validator = Draft202012Validator(self.schema)
        self.batcher = Batcher(model.run, max_batch, max_wait_ms / 1000)

    def health(self) -> dict:
        outputs = [o.name for o in self.model.session.get_outputs()]
        inputs = {f.name: {"shape": f.shape, "kind": f.kind, "features": f.features}
                  for f in self.fields}
        return {"status": "ok", "model": self.model.spec["name"], "file": str(self.model.path),
                "tasks": {h or "task": t["kind"] for h, t in self.model.heads.items()},
                "inputs": inputs, "outputs": outputs, "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait * 1000, "max_rows": self.max_rows,
                **self.batcher.stats}

    async def read(self, request):
        """The request's model inputs (Columns by input name)."""
        body = await request.body()
        if request.headers.get("content-type", "").split(";")[0].strip() == "text/csv":
            feed = await asyncio.to_thread(self._read_csv, body)
            limit_rows(len(feed), self.max_rows)
            return feed
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not JSON ({str(e).splitlines()[0]}); send "
                               '{"rows": [...]} or a CSV file as text/csv', 400) from None
        limit_rows(rows_in(data), self.max_rows)
        check(self.validator, data)
        return to_feed(self.fields, data)

    def _read_csv(self, body: bytes):
        with tempfile.TemporaryDirectory(prefix="dlc-serve-") as tmp:
            path = Path(tmp) / "upload.csv"
            path.write_bytes(body)
            try:
                x = predict_inputs(self.model, str(path))
            except DlcError as e:  # messages name the file as the user sent it
                raise RequestError(str(e).replace(str(path), path.name)) from None
        return x if isinstance(x, Columns) else Columns({self.fields[0].name: x})

    async def predict(self, request) -> JSONResponse:
        try:
            out = await self.batcher.predict(await self.read(request))
        except RequestError as e:
            return JSONResponse({"error": str(e)}, e.status)
        except DlcError as e:  # onnxruntime refused the input (an id outside the vocabulary)
            return JSONResponse({"error": str(e)}, 422)
        return JSONResponse({"predictions": prediction_rows(self.model, out)})


def create_app(model, max_batch: int = 64, max_wait_ms: float = 0.0,
               max_rows: int = 1024) -> Starlette:
    server = Server(model, max_batch, max_wait_ms, max_rows)
    page = render_page(server.model, server.fields)

    async def http_error(request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker = asyncio.create_task(server.batcher.work())
        yield
        worker.cancel()

    async def index(request) -> HTMLResponse:
        return HTMLResponse(page)

    async def health(request) -> JSONResponse:
        return JSONResponse(server.health())

    async def schema(request) -> JSONResponse:
        return JSONResponse(server.schema)

    routes = [Route("/", index), Route("/health", health), Route("/schema", schema),
              Route("/predict", server.predict, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})
