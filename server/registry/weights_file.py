"""Read a safetensors file we did not write, without trusting a byte of it.

The header is a length (8 bytes) then JSON; the tensors follow. Everything a crafted file can lie
about is bounded before it costs anything: the header length (far below the weights limit, since a
real LoRA header is a few hundred kB at most), its nesting, every tensor's shape, dtype and byte
span, and the total the header declares (a "100 GB tensor" is refused as too large, not waited for).

A file shorter than its header says is a copy in progress (``AdapterIncomplete``) only while it
is still changing; once it has been left alone for ``STALL_SECONDS`` it is refused as truncated.
"""

from __future__ import annotations

import math
import struct
import time
from pathlib import Path

from ..errors import AdapterIncomplete, AdapterRejected
from ..jsonbounds import JSONRefused, loads_bounded

MAX_HEADER_BYTES = 8 * 1024 * 1024
STALL_SECONDS = 60.0  # a "copy in progress" that has not changed for this long is truncated
ITEM_SIZE = {
    "F16": 2,
    "BF16": 2,
    "F32": 4,
    "F64": 8,
    "I8": 1,
    "U8": 1,
    "I16": 2,
    "U16": 2,
    "I32": 4,
    "U32": 4,
    "I64": 8,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
Header = dict[str, dict[str, object]]


def still_arriving(file: Path) -> bool:
    """Whether ``file`` changed recently enough to be a copy in progress rather than a broken file.

    The inode's change time counts too: ``rsync -a`` and ``cp -p`` give a file arriving now the old
    modification time of its source."""
    status = file.stat()
    return time.time() - max(status.st_mtime, status.st_ctime) < STALL_SECONDS


def short_file(file: Path, detail: str) -> AdapterIncomplete | AdapterRejected:
    """The error for a file shorter than it should be: waited for while it changes, refused after."""
    if still_arriving(file):
        return AdapterIncomplete(f"{file.parent.name}: {file.name} is still being written ({detail}).")
    return AdapterRejected(
        "truncated",
        f"{file.parent.name}: {file.name} is truncated ({detail}) and has not changed for {STALL_SECONDS:.0f} s.",
    )


def read_header(path: Path, *, max_bytes: int = 2**62) -> Header:
    """Tensor name -> {dtype, shape, data_offsets}, every field checked; ``__metadata__`` dropped."""
    name = f"{path.parent.name}: {path.name}"
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise short_file(path, f"{len(prefix)} bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise AdapterRejected(
                "bad_safetensors", f"{name} declares a {length}-byte header, above the limit of {MAX_HEADER_BYTES}."
            )
        if 8 + length > size:
            raise short_file(path, f"its header needs {8 + length} bytes, the file has {size}")
        raw = f.read(length)
    try:
        header = loads_bounded(raw, max_bytes=MAX_HEADER_BYTES, what="its header")
    except JSONRefused as exc:
        raise AdapterRejected("bad_safetensors", f"{name}: {exc}.") from None
    if not isinstance(header, dict):
        raise AdapterRejected("bad_safetensors", f"{name}: the header is not a JSON object.")
    header.pop("__metadata__", None)
    spans = sorted(_check_entry(name, key, entry) for key, entry in header.items())
    end = 0
    for start, stop in spans:
        if start != end:
            raise AdapterRejected(
                "bad_safetensors", f"{name}: tensors overlap or leave gaps (offset {start}, expected {end})."
            )
        end = stop
    declared = 8 + length + end
    if declared > max_bytes:
        raise AdapterRejected("too_large", f"{name} declares {declared} bytes, above the limit of {max_bytes}.")
    if declared > size:
        raise short_file(path, f"{size} of {declared} bytes")
    if declared < size:
        raise AdapterRejected("bad_safetensors", f"{name} has trailing bytes after its tensors.")
    return header


def _check_entry(name: str, key: str, entry: object) -> tuple[int, int]:
    """The tensor's byte span, after checking its dtype and shape agree with it."""
    if not isinstance(entry, dict):
        raise AdapterRejected("bad_safetensors", f"{name}: tensor {key} is not described by an object.")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEM_SIZE:
        raise AdapterRejected("bad_safetensors", f"{name}: tensor {key} has an unknown dtype {str(dtype)[:40]!r}.")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(type(d) is int and d >= 0 for d in shape)):
        raise AdapterRejected("bad_safetensors", f"{name}: tensor {key} has an invalid shape.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise AdapterRejected("bad_safetensors", f"{name}: tensor {key} has no valid data_offsets.")
    start, stop = offsets
    if stop - start != math.prod(shape) * ITEM_SIZE[str(dtype)]:
        raise AdapterRejected(
            "bad_safetensors", f"{name}: tensor {key}'s data_offsets do not match its shape and dtype."
        )
    return start, stop


# Where a float's exponent bits are all ones, the value is inf or NaN: checked on the raw bits, so
# neither torch nor a bfloat16-aware numpy is needed.
_EXPONENT_MASKS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000)}


def check_finite(weights: Path) -> None:
    """Refuse weights holding NaN or inf (they answer "" greedily and break sampling)."""
    import numpy as np

    header = read_header(weights)
    with weights.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + length)
        data = f.read()
    for key, entry in header.items():
        if str(entry["dtype"]) not in _EXPONENT_MASKS:
            continue  # validation refuses non-float LoRA weights with its own message
        dtype, mask = _EXPONENT_MASKS[str(entry["dtype"])]
        offsets: list[int] = entry["data_offsets"]  # type: ignore[assignment]  # checked by read_header
        start, stop = offsets
        bits = np.frombuffer(data, dtype=dtype, count=(stop - start) // np.dtype(dtype).itemsize, offset=start)
        if bool(((bits & mask) == mask).any()):
            raise AdapterRejected("non_finite_weights", f"{weights.parent.name}: tensor {key} holds NaN or inf values.")
