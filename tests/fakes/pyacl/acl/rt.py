"""``acl.rt``: devices, contexts, memory and copies over a simulated address space."""

from __future__ import annotations

from . import _sim
from ._sim import (
    ACL_ERROR_INVALID_PARAM, ACL_ERROR_RT_CONTEXT_NULL, ACL_ERROR_RT_INVALID_DEVICEID, ACL_ERROR_RT_PARAM_INVALID,
    AclFail, Region, api, check,
)

MEMCPY_KINDS = {0: ("host", "host"), 1: ("host", "device"), 2: ("device", "host"), 3: ("device", "device")}


def _side(region: Region) -> str:
    return "device" if region.kind == "device" else "host"


@api("rt.set_device", "ret")
def set_device(device_id: int) -> int:
    _sim.require_init()
    check(isinstance(device_id, int) and 0 <= device_id < _sim.state.devices, ACL_ERROR_RT_INVALID_DEVICEID)
    _sim.state.device_refs[device_id] = _sim.state.device_refs.get(device_id, 0) + 1
    return 0


@api("rt.reset_device", "ret")
def reset_device(device_id: int) -> int:
    _sim.require_init()
    check(_sim.state.device_refs.get(device_id, 0) > 0, ACL_ERROR_RT_INVALID_DEVICEID)
    _sim.state.device_refs[device_id] -= 1
    if _sim.state.device_refs[device_id] == 0:
        del _sim.state.device_refs[device_id]
    return 0


@api("rt.create_context", "tuple")
def create_context(device_id: int):
    _sim.require_init()
    # A context belongs to a device the process has set first.
    check(_sim.state.device_refs.get(device_id, 0) > 0, ACL_ERROR_RT_INVALID_DEVICEID)
    handle = _sim.state.handle()
    _sim.state.contexts[handle] = device_id
    _sim.state.current_context = handle  # documented: the new context becomes current for this thread
    return handle, 0


@api("rt.destroy_context", "ret")
def destroy_context(context: int) -> int:
    _sim.require_init()
    check(context in _sim.state.contexts, ACL_ERROR_RT_CONTEXT_NULL)
    del _sim.state.contexts[context]
    if _sim.state.current_context == context:
        _sim.state.current_context = None
    return 0


@api("rt.set_context", "ret")
def set_context(context: int) -> int:
    _sim.require_init()
    check(context in _sim.state.contexts, ACL_ERROR_RT_CONTEXT_NULL)
    _sim.state.current_context = context
    return 0


@api("rt.get_run_mode", "tuple")
def get_run_mode():
    _sim.require_init()
    return 1, 0  # ACL_HOST: the application runs on the host, the model on the device


def _allocate(kind: str, size: int) -> int:
    ctx = _sim.require_context()
    check(isinstance(size, int) and size > 0, ACL_ERROR_INVALID_PARAM)
    ptr = _sim.state.address(size)
    _sim.state.regions[ptr] = Region(kind=kind, data=bytearray(size), size=size, device=_sim.state.contexts[ctx])
    return ptr


@api("rt.malloc", "tuple")
def malloc(size: int, policy: int):
    check(policy in (0, 1, 2, 3, 4, 5), ACL_ERROR_INVALID_PARAM)
    return _allocate("device", size), 0


@api("rt.malloc_host", "tuple")
def malloc_host(size: int):
    return _allocate("host", size), 0


def _release(kind: str, ptr: int) -> int:
    _sim.require_init()
    region = _sim.state.regions.get(ptr)
    check(region is not None and region.kind == kind, ACL_ERROR_RT_PARAM_INVALID)
    del _sim.state.regions[ptr]
    return 0


@api("rt.free", "ret")
def free(ptr: int) -> int:
    return _release("device", ptr)


@api("rt.free_host", "ret")
def free_host(ptr: int) -> int:
    return _release("host", ptr)


@api("rt.memcpy", "ret")
def memcpy(dst: int, dest_max: int, src: int, count: int, kind: int) -> int:
    """``ret = acl.rt.memcpy(dst, dest_max, src, count, kind)``, synchronous (aclpythondevg memcpy page,
    en/canncommercial/800 aclpythondevg_01_0124). ``dst``/``src`` may point inside an allocation (base +
    offset), as real code does to write one slot of a device-resident KV cache device to device
    (Tlntin/qwen-ascend-llm utils/engine.py). dest_max is "the maximum memory length of the destination
    address", i.e. what is left of the destination from ``dst`` on; the simulator checks it, and count,
    against the allocation (the real runtime only trusts dest_max)."""
    _sim.require_context()
    check(kind in MEMCPY_KINDS, ACL_ERROR_INVALID_PARAM)
    dst_region, dst_off = _sim.find_region(dst)
    src_region, src_off = _sim.find_region(src)
    # bytes_to_ptr memory is read-only (the docs: the bytes object must outlive the pointer; bytes are immutable)
    check(dst_region.kind != "bytes" and not dst_region.readonly, ACL_ERROR_RT_PARAM_INVALID)
    # The real runtime infers the direction from the pointers and fails an impossible copy.
    check(MEMCPY_KINDS[kind] == (_side(src_region), _side(dst_region)), ACL_ERROR_RT_PARAM_INVALID)
    check(isinstance(count, int) and isinstance(dest_max, int), ACL_ERROR_INVALID_PARAM)
    check(0 <= count <= dest_max, ACL_ERROR_INVALID_PARAM)
    check(dest_max <= dst_region.size - dst_off, ACL_ERROR_INVALID_PARAM)
    check(count <= src_region.size - src_off, ACL_ERROR_INVALID_PARAM)
    # One copy through memoryviews, which move overlapping ranges (source and destination may be slots of the
    # same allocation) as memmove does.
    memoryview(dst_region.data)[dst_off:dst_off + count] = memoryview(src_region.data)[src_off:src_off + count]
    _sim.count_copy(kind, count)
    return 0


@api("rt.memset", "ret")
def memset(ptr: int, max_size: int, value: int, count: int) -> int:
    _sim.require_context()
    region, offset = _sim.find_region(ptr)
    check(region.kind != "bytes" and not region.readonly and count <= max_size <= region.size - offset,
          ACL_ERROR_INVALID_PARAM)
    region.data[offset:offset + count] = bytes([value & 0xFF]) * count
    return 0


__all__ = ["set_device", "reset_device", "create_context", "destroy_context", "set_context", "get_run_mode",
           "malloc", "malloc_host", "free", "free_host", "memcpy", "memset", "AclFail"]
