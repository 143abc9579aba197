"""`dlc serve`: a trained model behind HTTP (Starlette on uvicorn; `pip install 'dlc[serve]'`).

Nothing here imports Starlette or uvicorn at module level (nor the app module, which does), so a
missing extra is one line.
"""

from __future__ import annotations

import socket

from dlc.errors import DlcError, UsageError, optional_module
from dlc.runtime.infer import load_model

MISSING = "dlc serve needs Starlette and uvicorn: pip install 'dlc[serve]'"


def _require():
    """uvicorn, once Starlette and uvicorn are known to be installed."""
    optional_module("starlette", MISSING, "dlc serve")
    return optional_module("uvicorn", MISSING, "dlc serve")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the address is known, and printed, before
    uvicorn starts; a client may connect as soon as it reads it. Its protocol must say TCP:
    asyncio sets TCP_NODELAY only then, and without it a response's body waits ~40 ms behind
    its headers (Nagle against the client's delayed ACK)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)  # proto TCP: asyncio then sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as e:
        raise DlcError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(model_path: str, host: str, port: int, max_batch: int, max_wait_ms: float,
          max_rows: int, device: str) -> None:
    """Load the model, bind, print the address, serve until interrupted."""
    if max_batch < 1 or max_rows < 1 or max_wait_ms < 0:
        raise UsageError("--max-batch and --max-rows must be at least 1, --max-wait-ms at "
                         "least 0")
    uvicorn = _require()
    from dlc.commands.serve.app import create_app  # Starlette's, now known to be installed

    model = load_model(model_path, device)
    app = create_app(model, max_batch, max_wait_ms, max_rows)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {model.spec['name']} ({model_path}) on http://{shown}:{bound}/ "
          f"(max batch {max_batch}, max wait {max_wait_ms:g} ms); Ctrl-C stops", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
