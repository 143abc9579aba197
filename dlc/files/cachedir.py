"""The user's cache folder, shared by every cache dlc keeps (optimised graphs, preprocessed
tables): `$DLC_CACHE_DIR`, else `$XDG_CACHE_HOME/dlc`, else `~/.cache/dlc`; `DLC_CACHE_DIR=off`
(or empty, 0, none) disables caching."""

from __future__ import annotations

import os
from pathlib import Path


def folder(name: str) -> Path | None:
    """`<cache>/<name>` (created), or None when caching is off or the folder is not writable."""
    env = os.environ.get("DLC_CACHE_DIR")
    if env is not None and env.strip().lower() in ("", "off", "0", "none"):
        return None
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or
                                      Path.home() / ".cache") / "dlc"
    path = base / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None
