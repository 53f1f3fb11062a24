"""``acl.util``: the host-pointer bridge between Python objects and pyACL, as each CANN release has it.

Which functions exist depends on the simulated CANN release (``_sim.cann_version``, from
ASCEND_LAB_SIM_CANN_VERSION or ``_sim.configure(cann_version=...)``):

  before 6.0.1   numpy_to_ptr(arr) and ptr_to_numpy(ptr, shape, npy_type) only (5.x aclpythondevg;
                 shared/reference/ascend.md §1). bytes_to_ptr / ptr_to_bytes do not exist: code must fall
                 back, as Ascend/samples python/common/acllite/acllite_utils.py does with
                 ``if "bytes_to_ptr" in dir(acl.util): ... else: acl.util.numpy_to_ptr(np_data)``.
  6.0.1 and on   also bytes_to_ptr(b) / ptr_to_bytes(ptr, size) ("documented since 6.0.1",
                 zh/canncommercial/601 aclpythondevg_01_0051/0052) and numpy_contiguous_to_ptr; numpy_to_ptr
                 and ptr_to_numpy stay, marked "to be deprecated" and still documented in 8.5/9.0
                 (canncommercial_900 aclpythondevg_01_0052/0054).

The functions of a release that lacks them are removed from this module, so ``dir(acl.util)`` and
``hasattr`` tell the truth.
"""

import numpy as _np

from . import _sim
from ._sim import Region as _Region

# bytes_to_ptr / numpy_to_ptr memory belongs to Python; the simulator keeps the most recent objects
# addressable so that a copy right after the call works, and forgets old ones (a stale pointer then
# fails the copy).
_MAX_BYTES_REGIONS = 256

# ptr_to_numpy's type is a NumPy C type number, not an aclDataType (ptr_to_numpy page,
# https://www.hiascend.com/llms-content/document/detail/canncommercial/canncommercial_900_API_runtimeapi_aclpythondevg_01_0054_html.md:
# 0 NPY_BOOL, 1 NPY_INT8, 2 NPY_UINT8, 3 NPY_INT16, 4 NPY_UINT16, 5 NPY_INT32, 6 NPY_UINT32, 7 NPY_INT64,
# 8 NPY_UINT64, 9 NPY_LONGLONG, 10 NPY_ULONGLONG, 11 NPY_FLOAT32, 12 NPY_DOUBLE, 23 NPY_HALF).
_NPY_TYPES = {
    0: _np.bool_, 1: _np.int8, 2: _np.uint8, 3: _np.int16, 4: _np.uint16, 5: _np.int32, 6: _np.uint32, 7: _np.int64,
    8: _np.uint64, 9: _np.longlong, 10: _np.ulonglong, 11: _np.float32, 12: _np.float64, 23: _np.float16,
}

_NEW_SURFACE_FROM = (6, 0, 1)
_NEW_ONLY = ("bytes_to_ptr", "ptr_to_bytes", "numpy_contiguous_to_ptr")


def _register(region: _Region) -> int:
    ptr = _sim.state.address(max(region.size, 1))
    regions = _sim.state.bytes_regions
    regions[ptr] = region
    while len(regions) > _MAX_BYTES_REGIONS:
        regions.popitem(last=False)
    return ptr


def _host_region(ptr: int, what: str) -> tuple[_Region, int]:
    try:
        region, offset = _sim.find_region(ptr)
    except _sim.AclFail:
        raise RuntimeError(f"{what}: {hex(ptr)} is not host memory (a real process would crash)") from None
    if region.kind == "device":
        raise RuntimeError(f"{what}: {hex(ptr)} is device memory; copy it to the host first")
    return region, offset


def bytes_to_ptr(data: bytes) -> int:
    """``ptr = acl.util.bytes_to_ptr(b)``; the bytes object must outlive the pointer (6.0.1+ docs). bytes are
    immutable, so the simulator refuses copies into this memory."""
    _sim.record("util.bytes_to_ptr")
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"bytes_to_ptr expects bytes, got {type(data).__name__}")
    return _register(_Region(kind="bytes", data=data, size=len(data), readonly=True, owner=data))


def ptr_to_bytes(ptr: int, size: int) -> bytes:
    """``b = acl.util.ptr_to_bytes(ptr, size)``: a copy of ``size`` bytes of host memory."""
    _sim.record("util.ptr_to_bytes")
    region, offset = _host_region(ptr, "ptr_to_bytes")
    if size > region.size - offset:
        raise RuntimeError(f"ptr_to_bytes: reading {size} B past the end of a {region.size} B buffer")
    return bytes(region.data[offset:offset + size])


def _numpy_region(arr: _np.ndarray) -> _Region:
    view = memoryview(arr).cast("B")
    return _Region(kind="numpy", data=view, size=arr.nbytes, readonly=not arr.flags.writeable, owner=arr)


def numpy_to_ptr(arr: _np.ndarray) -> int:
    """``ptr = acl.util.numpy_to_ptr(arr)``: the address of the array's own memory, so a device-to-host
    memcpy into it fills the array (how Ascend/samples acllite copy_data_as_numpy uses it). Pages:
    zh/canncommercial/601 aclpythondevg_01_0047; canncommercial_900 aclpythondevg_01_0052. A
    non-contiguous array gets the documented warning ("The input ndarray is discontiguous. Please use
    acl.util.numpy_contiguous_to_ptr instead."); the real pointer then addresses strided memory a memcpy
    reads as if contiguous, so the simulator registers a read-only snapshot of its bytes in memory order."""
    _sim.record("util.numpy_to_ptr")
    if not isinstance(arr, _np.ndarray):
        raise ValueError("needs an ndarray as argument")
    # (Current pyACL also raises a Python Warning "acl.util.numpy_to_ptr will be deprecated" on each call,
    # cann/runtime python/pyACL/util/numpy_convert.cpp; since which release is not documented, so the
    # simulator stays quiet.)
    if not arr.flags.c_contiguous:
        print("Warning:The input ndarray is discontiguous. Please use acl.util.numpy_contiguous_to_ptr instead.")
        snapshot = _np.ascontiguousarray(arr)
        snapshot.flags.writeable = False
        return _register(_numpy_region(snapshot))
    return _register(_numpy_region(arr))


def numpy_contiguous_to_ptr(arr: _np.ndarray):
    """``ptr, data_out = acl.util.numpy_contiguous_to_ptr(data_in)``: data_out is the row-contiguous array
    the pointer addresses (canncommercial_900 aclpythondevg_01_0053)."""
    _sim.record("util.numpy_contiguous_to_ptr")
    if not isinstance(arr, _np.ndarray):
        raise ValueError("needs an ndarray as argument")
    out = arr if arr.flags.c_contiguous else _np.ascontiguousarray(arr)
    return _register(_numpy_region(out)), out


def ptr_to_numpy(ptr: int, shape, npy_type: int) -> _np.ndarray:
    """``arr = acl.util.ptr_to_numpy(ptr, shape, type)``: host memory as an array Python reads directly (a
    view, no copy). ``type`` is a NumPy C type number (_NPY_TYPES); an aclDataType passed by mistake reads
    the bytes as another type, as the real call would."""
    _sim.record("util.ptr_to_numpy")
    if npy_type not in _NPY_TYPES:
        raise ValueError(f"ptr_to_numpy: unsupported NumPy type number {npy_type}")
    dtype = _np.dtype(_NPY_TYPES[npy_type])
    dims = tuple(int(d) for d in shape)
    size = int(_np.prod(dims, dtype=_np.int64)) * dtype.itemsize
    region, offset = _host_region(ptr, "ptr_to_numpy")
    if size > region.size - offset:
        raise RuntimeError(f"ptr_to_numpy: reading {size} B past the end of a {region.size} B buffer")
    return _np.frombuffer(region.data, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(dims)


_ALL = {name: globals()[name] for name in ("bytes_to_ptr", "ptr_to_bytes", "numpy_to_ptr", "numpy_contiguous_to_ptr",
                                           "ptr_to_numpy")}


def _apply_surface() -> None:
    """Expose exactly the functions of the simulated release (see the module docstring)."""
    new = _sim.parse_cann_version(_sim.cann_version) >= _NEW_SURFACE_FROM
    for name, fn in _ALL.items():
        if new or name not in _NEW_ONLY:
            globals()[name] = fn
        else:
            globals().pop(name, None)


_sim._surface_listeners.append(_apply_surface)
_apply_surface()
