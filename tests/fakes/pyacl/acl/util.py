"""``acl.util``: the documented bytes ↔ pointer bridge (the replacement for numpy_to_ptr)."""

from __future__ import annotations

from . import _sim
from ._sim import Region

# bytes_to_ptr memory belongs to Python; the simulator keeps the most recent objects addressable so
# that a copy right after the call works, and forgets old ones (a stale pointer then fails the copy).
_MAX_BYTES_REGIONS = 256


def bytes_to_ptr(data: bytes) -> int:
    _sim.state.calls.append("util.bytes_to_ptr")
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"bytes_to_ptr expects bytes, got {type(data).__name__}")
    ptr = _sim.state.address(max(len(data), 1))
    regions = _sim.state.bytes_regions
    regions[ptr] = Region(kind="bytes", data=data, size=len(data))
    while len(regions) > _MAX_BYTES_REGIONS:
        regions.popitem(last=False)
    return ptr


def ptr_to_bytes(ptr: int, size: int) -> bytes:
    _sim.state.calls.append("util.ptr_to_bytes")
    try:
        region, offset = _sim.find_region(ptr)
    except _sim.AclFail:
        raise RuntimeError(f"ptr_to_bytes: {hex(ptr)} is not host memory (a real process would crash)") from None
    if region.kind == "device":
        raise RuntimeError(f"ptr_to_bytes: {hex(ptr)} is device memory; copy it to the host first")
    if size > region.size - offset:
        raise RuntimeError(f"ptr_to_bytes: reading {size} B past the end of a {region.size} B buffer")
    return bytes(region.data[offset:offset + size])
