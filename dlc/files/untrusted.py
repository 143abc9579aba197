"""Files a user names (specs, data, models): say what a path really is, bound what a file claims
before allocating it, and read models only when they carry their own weights.

Every size dlc takes from a file is checked against one of the limits below before memory is
allocated for it; the error names the limit, so a user with a real need knows what was refused.
"""

from __future__ import annotations

import json
import os
import stat
import tokenize
import zipfile
from pathlib import Path

from dlc.errors import DlcError

MAX_SPEC_BYTES = 16 * 2**20  # a spec at the 10,000-layer limit is about 1 MB
MAX_TABLE_BYTES = 2**30  # a CSV data or input file
MAX_MODEL_BYTES = 2**31 - 1  # protobuf's own limit for one message
MAX_ARRAY_BYTES = 2**30  # one array of an .npy/.npz file, once decompressed
MAX_NPZ_BYTES = 2**31  # all arrays of one .npz file together, once decompressed
MAX_NESTING = 64  # lists/mappings in a spec, --set value or JSON metadata (real specs: ~6)

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _why(e: BaseException) -> str:
    """An exception's first line (its type when it has no message: EOFError)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_file(path: str | Path, what: str, limit: int | None = None) -> Path:
    """`path` if it is a readable regular file of at most `limit` bytes; otherwise a DlcError
    that says what the path is: missing, a folder, a FIFO, a device, too big."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        broken = os.path.islink(path)
        raise DlcError(f"{what} not found: {path}"
                       + (" (a broken symbolic link)" if broken else "")) from None
    except OSError as e:
        raise DlcError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except ValueError:  # os.stat refuses a path with a NUL character in it
        raise DlcError(f"{what} path {str(path)!r} holds a NUL character") from None
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise DlcError(f"{what} {path} is {kind}, not a regular file")
    if limit is not None and st.st_size > limit:
        raise DlcError(f"{what} {path} is {_size(st.st_size)}; dlc reads at most "
                       f"{_size(limit)} of a {what}")
    return path


def read_bytes(path: str | Path, what: str, limit: int) -> bytes:
    """The bytes of a checked user file (see check_file)."""
    path = check_file(path, what, limit)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DlcError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > limit:  # it grew since check_file looked
        raise DlcError(f"{what} {path} is over {_size(limit)}; dlc reads at most that")
    return data


def too_deep(value, limit: int = MAX_NESTING) -> bool:
    """Whether lists/dicts nest deeper than `limit` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict)
                                                  else item))
    return False


def load_json(text: str | bytes, what: str):
    """JSON from a file or metadata dlc wrote, refused with one line when it is not JSON or
    nests deeper than MAX_NESTING (json.loads itself recurses once per level)."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise DlcError(f"{what} is not valid JSON") from None
    if too_deep(value):
        raise DlcError(f"{what} nests deeper than {MAX_NESTING} levels (MAX_NESTING)")
    return value


# ---- .npy / .npz ----------------------------------------------------------------------------
def _array_bytes(f, where: str) -> int:
    """The decompressed size an .npy stream's header claims (read before the array is)."""
    import numpy as np
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(f)
        reader = (npformat.read_array_header_1_0 if version == (1, 0)
                  else npformat.read_array_header_2_0)
        shape, _, dtype = reader(f)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as e:
        # numpy parses the header dict with Python's tokenizer: a NUL in it is a TokenError
        raise DlcError(f"{where}: not a valid .npy array ({_why(e)})") from None
    count = 1
    for d in shape:
        count *= int(d)
    size = count * np.dtype(dtype).itemsize
    if size > MAX_ARRAY_BYTES:
        raise DlcError(f"{where}: the array header claims shape {list(shape)} ({_size(size)}); "
                       f"dlc reads arrays of at most {_size(MAX_ARRAY_BYTES)} (MAX_ARRAY_BYTES)")
    return size


def check_numpy_file(path: Path, display: str) -> str:
    """'npz' or 'npy' for a file with that signature whose arrays fit dlc's limits; otherwise a
    DlcError that names what the file is not or which array is too big."""
    path = check_file(path, "data file", None)
    with open(path, "rb") as f:
        head = f.read(6)
        if head == b"\x93NUMPY":
            f.seek(0)
            _array_bytes(f, display)
            return "npy"
    if not head.startswith(b"PK"):
        raise DlcError(f"{display} is not an .npz or .npy file (no zip or NumPy signature); "
                       "write it with numpy.savez or numpy.save")
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as member:
                    total += _array_bytes(member, f"{display}: {info.filename}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError,
            OSError, EOFError) as e:
        raise DlcError(f"cannot read {display} as npz: {_why(e)}") from None
    if total > MAX_NPZ_BYTES:
        raise DlcError(f"{display}: its arrays hold {_size(total)} together; dlc reads at most "
                       f"{_size(MAX_NPZ_BYTES)} (MAX_NPZ_BYTES)")
    return "npz"


# ---- ONNX models ----------------------------------------------------------------------------
def _tensors(message):
    """Every TensorProto inside a protobuf message: initializers, sparse initializers,
    Constant attributes, subgraphs and functions alike."""
    import onnx

    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        for item in ([value] if hasattr(value, "ListFields") else value):  # one or repeated
            if isinstance(item, onnx.TensorProto):
                yield item
            else:
                yield from _tensors(item)


def read_model(path: str | Path, what: str = "model"):
    """The ModelProto of a model file. Models whose tensors keep their values in an external
    file are refused: onnx and onnxruntime resolve such a location against the working folder,
    so a model could read any file there into its weights; dlc never writes external data."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    raw = read_bytes(path, f"{what} file", MAX_MODEL_BYTES)
    try:
        proto = onnx.load_model_from_string(raw)
        external = next((t for t in _tensors(proto)
                         if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data),
                        None)
        if external is not None:
            raise DlcError(f"{path}: tensor '{external.name}' keeps its values in an external "
                           "file; dlc loads only self-contained models (weights inside the .onnx "
                           "file)")
    except (DecodeError, ValueError, RuntimeError, RecursionError) as e:
        raise DlcError(f"{path} is not a valid ONNX model ({type(e).__name__})") from None
    return proto
