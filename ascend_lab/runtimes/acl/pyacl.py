"""pyACL's conventions, shared by every module that calls CANN's ``import acl``: the runtime
(:mod:`ascend_lab.runtimes.acl.runtime`), the device-to-device bandwidth of the roofline
(:func:`ascend_lab.bench.roofline.measure_acl_d2d_bandwidth`) and the profiler capture
(:mod:`ascend_lab.runtimes.acl.profiler`).

Written against the documented pyACL Python API (CANN "pyACL API reference", aclpythondevg pages 0007, 0124, 0147, 0201):
``(value, ret)`` tuples where the C API has an out-parameter, bare values otherwise.

- the return codes, memory and copy kinds this project uses, and ``aclDataType`` → numpy;
- :class:`AclError` (a call and its code, with the cause where the docs name it) and :class:`AclInputError`;
- :func:`import_acl`, failing with how to load CANN;
- :func:`acquire_acl` / :func:`release_acl`: ``acl.init`` once in the life of the process, reference counted
  over its users (runtimes, the roofline's bandwidth, sweep jobs run in one process), ``acl.finalize`` once at
  exit. The pyACL pages ask for one init and one finalize "before the process exits" (aclpythondevg_0013,
  canncommercial/601; acl.finalize, aclpythondevg_01_0005 of the Atlas 200I DK A2 23.0.RC2 guide); init after
  finalize in one process is allowed by recent cann/runtime FAQs only, so no CANN we support is asked to
  re-initialise. When pyACL was already initialised by someone else in this process (``acl.init`` returns
  100002, e.g. torch_npu), that owner finalizes it, not us;
- :func:`graph_output_names` and :class:`HostBridge` (host buffers before and after CANN 6.0.1).
"""

from __future__ import annotations

import atexit
import threading

import numpy as np

from ascend_lab.cann import toolkit
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
        raise ToolchainError(toolkit.missing_toolkit_message(
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
_init_owned = False  # this module called acl.init successfully and finalizes at exit
_init_module = None  # the acl module initialised in this process (None: not yet)


def acquire_acl(acl) -> None:
    """One more user of pyACL in this process; the first ever calls ``acl.init`` (and arranges ``acl.finalize``
    at exit)."""
    global _init_users, _init_owned, _init_module
    with _init_lock:
        if _init_module is not acl:
            ret = acl.init()
            if ret == ACL_ERROR_REPEAT_INITIALIZE:
                _init_owned = False  # initialised elsewhere in this process; its owner finalizes
            elif ret != ACL_SUCCESS:
                raise AclError("acl.init", ret)
            else:
                _init_owned = True
                atexit.register(_finalize_at_exit, acl)
            _init_module = acl
        _init_users += 1


def release_acl(acl) -> None:
    """One user fewer. pyACL stays initialised for the next (a sweep's next job): see the module docstring."""
    global _init_users
    with _init_lock:
        _init_users = max(_init_users - 1, 0)


def acl_users() -> int:
    """The users holding pyACL now (0 when every runtime is closed)."""
    return _init_users


def _finalize_at_exit(acl) -> None:
    global _init_owned, _init_module
    with _init_lock:
        if not (_init_owned and _init_module is acl):
            return
        _init_owned, _init_module = False, None
        ret = acl.finalize()
    if ret != ACL_SUCCESS:
        import logging

        logging.getLogger(__name__).warning("acl.finalize at exit returned %s", ret)


# ------------------------------------------------------------------ host memory


def graph_output_names(raw: list[str], expected: list[str] | None, model: str) -> list[str]:
    """The graph names of a model's outputs, from pyACL's ``get_output_name_by_index`` strings.

    ONNX-built models report ``op_name:edge_index:output_name`` (aclcppdevg_03_1457), the op part possibly a
    fused name (``PartitionedCall_…``); with ATC's ``--out_nodes`` the form is ``op_name:edge_index``, with no
    name. Outputs are matched by name where every one has a name; else, where their number is the contract's
    (``expected``), they are taken in the contract's order. Otherwise the error names the flag that causes it.
    """
    parts = [item.split(":") for item in raw]
    names = [p[-1] if len(p) != 2 else None for p in parts]  # ["op", "idx"]: --out_nodes, no name
    if all(names) and (expected is None or sorted(names) == sorted(expected)):
        return names
    if expected is not None and len(raw) == len(expected):
        return list(expected)
    unnamed = [item for item, name in zip(raw, names) if name is None]
    why = (f"{len(unnamed)} of them carry no name ({', '.join(unnamed[:3])}: the op_name:edge_index form ATC's "
           "--out_nodes produces; drop --out_nodes from atc.extra_args, or list the contract's outputs in its "
           "order)") if unnamed else "their names are not the graph contract's"
    raise ToolchainError(f"runtime=acl: {model} has outputs {raw}, but the graph contract expects "
                         f"{expected}: {why}.")


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
