"""pyACL simulator: importable as ``acl`` only when a test puts ``tests/fakes/pyacl`` on sys.path.

Implements the subset of pyACL that ascend_lab uses, with the documented Python signatures and return
conventions (a tuple ``(value, ret)`` where the C API has an out-parameter, the bare value otherwise).
Models are the stand-in ``.om`` files of ``tests/fakes/om_format.py``; ``mdl.execute`` runs their ONNX
with onnxruntime, in the precision the .om was compiled with (``_precision.py``). Output names of
ONNX-built models read ``op_name:edge_index:output_name``, as pyACL documents. ``acl.util`` has the surface
of the simulated CANN release (``util.py``). Test hooks live in ``acl._sim`` (reset, fail_next, leaks,
configure, calls, traffic, reset_traffic); ``acl.prof`` is the
profiling API (``prof.py``: what it writes and the rules it enforces).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import _sim, mdl, prof, rt, util
from ._sim import ACL_ERROR_INVALID_FILE, ACL_ERROR_REPEAT_INITIALIZE, ACL_ERROR_UNINITIALIZE, AclFail, api, check

# Constants as the pyACL samples define them (the real module exposes none of these; code should
# use its own), provided for convenience.
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEM_MALLOC_HUGE_ONLY = 1
ACL_MEM_MALLOC_NORMAL_ONLY = 2
ACL_MEMCPY_HOST_TO_HOST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_SUCCESS = 0


# acl.init after acl.finalize in one process. The pyACL guides pair one init with one finalize "before the
# process exits" (aclpythondevg_0013, canncommercial/601; aclpythondevg_0007, CANNCommunityEdition/900beta2);
# only recent cann/runtime FAQs (aclInit_initialization_failures.md) allow a re-init, and nothing documents
# it for 8.0, so the stand-in refuses it. The code is the simulator's own: the documents give the rule only.
ACL_ERROR_REINIT_AFTER_FINALIZE = 100049


@api("init", "ret")
def init(config_path: str | None = None) -> int:
    check(not _sim.state.initialized, ACL_ERROR_REPEAT_INITIALIZE)
    check(_sim.state.finalizes == 0, ACL_ERROR_REINIT_AFTER_FINALIZE)
    if config_path:
        try:
            json.loads(Path(config_path).read_text())
        except (OSError, ValueError):
            raise AclFail(ACL_ERROR_INVALID_FILE)
    _sim.state.initialized = True
    _sim.state.inits += 1
    return 0


@api("get_soc_name", "value")
def get_soc_name() -> str | None:
    """``name = acl.get_soc_name()``: the chip's version string, None on failure; no constraint (no init
    needed): aclpythondevg_01_0008 (canncommercial/601)."""
    return _sim.state.chip


@api("finalize", "ret")
def finalize() -> int:
    check(_sim.state.initialized, ACL_ERROR_UNINITIALIZE)
    # Leaked objects stay registered so that _sim.leaks() still reports them after finalize.
    _sim.state.initialized = False
    _sim.state.finalizes += 1
    return 0


@api("create_data_buffer", "value")
def create_data_buffer(ptr: int, size: int) -> int:
    _sim.require_init()
    region, offset = _sim.find_region(ptr)
    check(region.kind == "device" and 0 < size <= region.size - offset, _sim.ACL_ERROR_INVALID_PARAM)
    handle = _sim.state.handle()
    _sim.state.data_buffers[handle] = (ptr, size)
    return handle


@api("destroy_data_buffer", "ret")
def destroy_data_buffer(buffer: int) -> int:
    check(buffer in _sim.state.data_buffers, _sim.ACL_ERROR_INVALID_PARAM)
    # Documented: the memory the buffer points at is not freed.
    del _sim.state.data_buffers[buffer]
    return 0


__all__ = ["init", "finalize", "get_soc_name", "create_data_buffer", "destroy_data_buffer", "rt", "mdl", "prof", "util", "_sim"]
