"""pyACL's conventions, shared by every module that calls CANN's ``import acl``: the runtime
(:mod:`ascend_lab.runtimes.acl.runtime`), the device-to-device bandwidth of the roofline
(:func:`ascend_lab.bench.roofline.measure_acl_d2d_bandwidth`) and the profiler capture
(:mod:`ascend_lab.runtimes.acl.profiler`).

Written against the documented pyACL Python API (CANN "pyACL API reference", aclpythondevg pages 0007, 0124, 0147, 0201):
``(value, ret)`` tuples where the C API has an out-parameter, bare values otherwise.

- the return codes, memory and copy kinds this project uses, and ``aclDataType`` → numpy;
- :class:`AclError` (a call and its code, with the cause where the docs name it) and :class:`AclInputError`;
- :func:`import_acl`, failing with how to load CANN;
- :func:`acquire_acl` / :func:`release_acl`: ``acl.init`` once per process, reference counted over its users;
  the last release calls ``acl.finalize``. When pyACL was already initialised by someone else in this
  process (``acl.init`` returns 100002, e.g. torch_npu), that owner finalizes it, not us;
- :func:`output_name` and :class:`HostBridge` (host buffers before and after CANN 6.0.1).
"""

from __future__ import annotations

import threading

import numpy as np

from ascend_lab import cann
from ascend_lab.errors import AscendLabError, ToolchainError

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"  # ACL_DYNAMIC_TENSOR_NAME

# aclDataType → numpy (CANN 8.0 enum). BF16 (27) maps only where ml_dtypes provides a numpy type.
ACL_TO_NUMPY = {
    0: "float32", 1: "float16", 2: "int8", 3: "int32", 4: "uint8", 6: "int16", 7: "uint16",
    8: "uint32", 9: "int64", 10: "uint64", 11: "float64", 12: "bool",
}
ACL_BF16 = 27

# Codes whose cause the docs name (ais_bench FAQ); others are reported by number only.
KNOWN_CODES = {
    ACL_ERROR_REPEAT_INITIALIZE: "pyACL is already initialised in this process",
    507033: "the device could not be opened: a driver, firmware or hardware fault (check `npu-smi info`)",
}


class AclError(ToolchainError):
    """A pyACL call returned a nonzero code (or a null handle)."""

    def __init__(self, call: str, ret: int | None, hint: str = "") -> None:
        self.call = call
        self.ret = ret
        what = f"{call} failed: ret={ret}" if ret is not None else f"{call} failed: returned a null handle"
        if ret in KNOWN_CODES:
            what += f" ({KNOWN_CODES[ret]})"
        super().__init__(what + (f"\n{hint}" if hint else ""))


class AclInputError(AscendLabError):
    """Feeds that do not match the compiled model; raised before anything runs."""


def import_acl():
    """The pyACL module, or a :class:`ToolchainError` saying how to load CANN."""
    try:
        import acl
    except Exception as exc:  # ImportError, or OSError from a missing libascendcl.so
        raise ToolchainError(cann.missing_toolkit_message(
            f"runtime=acl: `import acl` failed ({type(exc).__name__}: {exc})")) from None
    return acl


def numpy_dtype(acl_dtype: int, where: str) -> np.dtype:
    if acl_dtype in ACL_TO_NUMPY:
        return np.dtype(ACL_TO_NUMPY[acl_dtype])
    if acl_dtype == ACL_BF16:
        try:
            import ml_dtypes
        except ImportError:
            raise ToolchainError(
                f"runtime=acl: {where} is bfloat16, which numpy cannot hold; `pip install ml_dtypes`, or compile "
                f"with a precision mode that keeps float16/float32 inputs and outputs") from None
        return np.dtype(ml_dtypes.bfloat16)
    raise ToolchainError(f"runtime=acl: {where} has aclDataType {acl_dtype}, which has no numpy equivalent")


# ------------------------------------------------------------------ process-level acl.init guard

_init_lock = threading.Lock()
_init_users = 0
_init_owned = False  # this module called acl.init successfully and must finalize


def acquire_acl(acl) -> None:
    """``acl.init`` for one more user in this process (the first user's call initialises pyACL)."""
    global _init_users, _init_owned
    with _init_lock:
        if _init_users == 0:
            ret = acl.init()
            if ret == ACL_ERROR_REPEAT_INITIALIZE:
                _init_owned = False  # initialised elsewhere in this process; its owner finalizes
            elif ret != ACL_SUCCESS:
                raise AclError("acl.init", ret)
            else:
                _init_owned = True
        _init_users += 1


def release_acl(acl) -> None:
    """One user fewer; the last one finalizes pyACL if :func:`acquire_acl` initialised it."""
    global _init_users, _init_owned
    with _init_lock:
        _init_users -= 1
        if _init_users == 0 and _init_owned:
            _init_owned = False
            ret = acl.finalize()
            if ret != ACL_SUCCESS:
                raise AclError("acl.finalize", ret)


# ------------------------------------------------------------------ host memory


def output_name(raw: str) -> str:
    """An output's graph name: ONNX-built models report ``op_name:edge_index:output_name``."""
    return raw.split(":")[-1]


class HostBridge:
    """Host buffers for ``acl.rt.memcpy``: ``bytes_to_ptr``/``ptr_to_bytes`` where CANN has them (6.0.1+),
    else ``numpy_to_ptr`` on numpy arrays (what Ascend/samples acllite falls back to on older CANN)."""

    def __init__(self, acl) -> None:
        self.acl = acl
        self.modern = hasattr(acl.util, "bytes_to_ptr") and hasattr(acl.util, "ptr_to_bytes")

    def source(self, array: np.ndarray) -> tuple[int, object]:
        """(pointer to the array's bytes, the object that must stay alive while the pointer is used)."""
        if self.modern:
            data = np.ascontiguousarray(array).tobytes()
            return self.acl.util.bytes_to_ptr(data), data
        contiguous = np.ascontiguousarray(array)
        return self.acl.util.numpy_to_ptr(contiguous), contiguous
