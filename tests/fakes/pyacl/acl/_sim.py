"""State and checks of the pyACL simulator (test-only; not part of the pyACL API).

The simulator behaves like the documented pyACL contract (see the shared Ascend reference, §1) and
is stricter than the real library where a mistake would only crash or corrupt memory on hardware:
it rejects invalid handles, out-of-bounds copies, wrong contexts and unconfigured dynamic models with
an error code, and it remembers every allocation so tests can assert that nothing leaked.

Test hooks (``from acl import _sim``):
  reset(chip=..., devices=...)   forget all state (per-test isolation) and set the simulated chip
  configure(chip=..., devices=...)
  fail_next(name, code, times=1) make the next call(s) of ``name`` (e.g. "mdl.execute") return ``code``
  leaks()                        list of what is still alive: init, devices, contexts, memory, buffers…
  state.calls                    every API call made, in order, by name ("mdl.execute", "init", ...)
  state.executions               number of successful ``mdl.execute`` calls
  state.initialized              whether acl.init is in effect
  state.inits / state.finalizes  successful acl.init / acl.finalize calls in this (simulated) process
  traffic()                      memcpy bytes and calls by kind since the last reset_traffic():
                                 {"h2d_bytes", "h2d_calls", "d2h_bytes", "d2h_calls", "d2d_bytes", "d2d_calls",
                                  "h2h_bytes", "h2h_calls", "api_calls": total API calls, "calls_by_name": {...}}
                                 (successful copies only; api_calls counts every call, failed ones too)
  reset_traffic()                zero those counters (state.calls is kept)
  configure(cann_version=...)    present the acl.util surface of that CANN release (see util.py)

Environment (read at import, for simulated CLI runs in subprocesses):
  ASCEND_LAB_SIM_CHIP     simulated chip, default Ascend910B3
  ASCEND_LAB_SIM_DEVICES  number of devices, default 1
  ASCEND_LAB_SIM_FAIL     "name:code[,name:code]" failures injected once each
  ASCEND_LAB_SIM_CANN_VERSION  CANN release whose acl.util surface to present, default 8.0.0; before
                          6.0.1 (e.g. 5.0.4) only numpy_to_ptr / ptr_to_numpy exist
  ASCEND_LAB_SIM_LEAKS_FILE  at interpreter exit, write {"leaks": leaks(at_exit=True), "executions": n,
                          "traffic": traffic(), "inits": n, "finalizes": n} as JSON to this file
"""

from __future__ import annotations

import atexit
import collections
import functools
import importlib.util
import itertools
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Error codes (aclError values; the simulator needs only "some documented-like nonzero code").
ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_INVALID_MODEL_ID = 100011
ACL_ERROR_DESERIALIZE_MODEL = 100012
ACL_ERROR_READ_MODEL_FAILURE = 100014
ACL_ERROR_MODEL_INPUT_NOT_MATCH = 100017
ACL_ERROR_MODEL_OUTPUT_NOT_MATCH = 100018
ACL_ERROR_MODEL_NOT_DYNAMIC = 100019
ACL_ERROR_RESOURCE_NOT_MATCH = 200004
ACL_ERROR_INVALID_RESOURCE_HANDLE = 200005
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_GE_FAILURE = 500002
ACL_ERROR_RT_FAILURE = 500003

DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"

# aclDataType ↔ numpy (bf16 has no numpy type; the simulator does not produce it).
ACL_DTYPES = {
    "float32": 0, "float16": 1, "int8": 2, "int32": 3, "uint8": 4, "int16": 6, "uint16": 7,
    "uint32": 8, "int64": 9, "uint64": 10, "float64": 11, "bool": 12,
}


def _load_om_format():
    # om_format lives beside this package (tests/fakes/om_format.py); load it by path so that only
    # tests/fakes/pyacl needs to be on sys.path.
    path = Path(__file__).resolve().parents[2] / "om_format.py"
    spec = importlib.util.spec_from_file_location("_ascend_lab_fake_om_format", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


om_format = _load_om_format()


@dataclass
class Region:
    # "device" (rt.malloc), "host" (rt.malloc_host), "bytes" (util.bytes_to_ptr, read-only),
    # "numpy" (util.numpy_to_ptr: the array's own memory, writable when the array is)
    kind: str
    data: bytearray | bytes | memoryview
    size: int  # requested size; copies are checked against it, not the rounded allocation
    device: int | None = None
    readonly: bool = False
    owner: Any = None  # keeps a numpy array alive while its pointer is registered


# Memcpy kinds (pyACL: ACL_MEMCPY_HOST_TO_HOST=0 ... DEVICE_TO_DEVICE=3; aclpythondevg memcpy page,
# en/canncommercial/800 aclpythondevg_01_0124) and the short names traffic() uses.
MEMCPY_KIND_NAMES = {0: "h2h", 1: "h2d", 2: "d2h", 3: "d2d"}


def _zero_traffic() -> dict[str, int]:
    return {f"{kind}_{what}": 0 for kind in MEMCPY_KIND_NAMES.values() for what in ("bytes", "calls")}


@dataclass
class Model:
    model_id: int
    path: str
    header: dict
    session: Any
    context: int
    inputs: list[dict]  # header inputs, plus the mbatch input for dynamic models
    outputs: list[dict]
    max_output_dims: list[list[int]] | None = None
    cur_output_dims: list[list[int]] | None = None
    source: Any = None  # the graph (bytes or path) the session was built from: prof.py opens a profiling session of it


@dataclass
class Dataset:
    buffers: list[int] = field(default_factory=list)
    dynamic: dict[int, tuple[str, Any]] = field(default_factory=dict)  # model_id → (kind, value) set for it


class State:
    def __init__(self, chip: str = "Ascend910B3", devices: int = 1) -> None:
        self.chip = chip
        self.devices = devices
        self.initialized = False
        self.inits = 0
        self.finalizes = 0
        self.device_refs: dict[int, int] = {}
        self.contexts: dict[int, int] = {}  # handle → device id
        self.local = threading.local()
        self.regions: dict[int, Region] = {}
        self.bytes_regions: OrderedDict[int, Region] = OrderedDict()
        self.data_buffers: dict[int, tuple[int, int]] = {}  # handle → (ptr, size)
        self.datasets: dict[int, Dataset] = {}
        self.descs: dict[int, int | None] = {}  # handle → model id filled by get_desc
        self.models: dict[int, Model] = {}
        self.failures: dict[str, list[int]] = {}
        self.calls: list[str] = []
        self.executions = 0
        self.traffic = _zero_traffic()
        self.calls_since_traffic_reset: collections.Counter[str] = collections.Counter()
        self._handles = itertools.count(0x1000)
        self._next_ptr = 0x7F0000000000

    def handle(self) -> int:
        return next(self._handles)

    def address(self, size: int) -> int:
        ptr = self._next_ptr
        # The documented rounding: a multiple of 32 B, plus 32 B; leave a gap so neighbours never touch.
        self._next_ptr += ((size + 31) // 32) * 32 + 32 + 4096
        return ptr

    @property
    def current_context(self) -> int | None:
        return getattr(self.local, "context", None)

    @current_context.setter
    def current_context(self, value: int | None) -> None:
        self.local.context = value


state = State()

DEFAULT_CANN_VERSION = "8.0.0"
# The release whose acl.util surface is presented; util.py applies it (bytes_to_ptr from 6.0.1 on).
cann_version = DEFAULT_CANN_VERSION
_surface_listeners: list[Callable[[], None]] = []


def parse_cann_version(text: str) -> tuple[int, int, int]:
    """'5.0.4' → (5, 0, 4); '6.0.RC1' → (6, 0, 0) (an RC sorts before the .1 release of its line);
    '8.0.RC3' → (8, 0, 0)."""
    parts = (text.strip().split(".") + ["0", "0"])[:3]
    numbers = []
    for part in parts:
        digits = part if part.isdigit() else ""
        if not digits and not part.upper().startswith(("RC", "T", "ALPHA", "BETA")):
            raise ValueError(f"not a CANN version: {text!r}")
        numbers.append(int(digits) if digits else 0)
    return numbers[0], numbers[1], numbers[2]


def reset(chip: str = "Ascend910B3", devices: int = 1, cann_version: str | None = None) -> None:
    """Forget everything (a fresh process, as far as pyACL can tell). The CANN version goes back to the
    one from the environment unless given."""
    global state
    state = State(chip=chip, devices=devices)
    _set_cann_version(cann_version or os.environ.get("ASCEND_LAB_SIM_CANN_VERSION") or DEFAULT_CANN_VERSION)


def configure(chip: str | None = None, devices: int | None = None, cann_version: str | None = None) -> None:
    if chip is not None:
        state.chip = chip
    if devices is not None:
        state.devices = devices
    if cann_version is not None:
        _set_cann_version(cann_version)


def _set_cann_version(version: str) -> None:
    global cann_version
    parse_cann_version(version)
    cann_version = version
    for listener in _surface_listeners:
        listener()


def record(name: str) -> None:
    """Count one API call (everything the simulator exposes goes through here)."""
    state.calls.append(name)
    state.calls_since_traffic_reset[name] += 1


def count_copy(kind: int, count: int) -> None:
    short = MEMCPY_KIND_NAMES[kind]
    state.traffic[f"{short}_bytes"] += count
    state.traffic[f"{short}_calls"] += 1


def traffic() -> dict[str, Any]:
    """Bytes and calls of successful memcpys by kind, and API calls, since the last reset_traffic()."""
    calls = state.calls_since_traffic_reset
    return {**state.traffic, "api_calls": sum(calls.values()), "calls_by_name": dict(calls)}


def reset_traffic() -> None:
    state.traffic = _zero_traffic()
    state.calls_since_traffic_reset = collections.Counter()


def fail_next(name: str, code: int, times: int = 1) -> None:
    """The next ``times`` calls of API ``name`` (e.g. "mdl.execute") fail with ``code``, doing nothing."""
    state.failures.setdefault(name, []).extend([code] * times)


# Other modules' leak reports (prof.py: profiling sessions and configs), called by leaks().
LEAK_SOURCES: list[Callable[[], list[str]]] = []
# Called as observer(name, start_ns, end_ns) after every API call (prof.py records ACL API data with them).
API_OBSERVERS: list[Callable[[str, int, int], None]] = []


def leaks(at_exit: bool = False) -> list[str]:
    """Everything acquired and not released, one line each; empty when all was cleaned up. ``acl.init`` is
    a leak only at exit: the pyACL pages ask for acl.finalize "before the process exits" (aclpythondevg_0013,
    canncommercial/601), so a process may hold it between its users."""
    out = [line for source in LEAK_SOURCES for line in source()]
    if state.initialized and at_exit:
        out.append("acl.init without acl.finalize")
    out += [f"device {d} set {n}x without reset_device" for d, n in state.device_refs.items() if n > 0]
    out += [f"context {hex(c)} not destroyed" for c in state.contexts]
    out += [f"{r.kind} memory {hex(p)} ({r.size} B) not freed" for p, r in state.regions.items()]
    out += [f"data buffer {hex(b)} not destroyed" for b in state.data_buffers]
    out += [f"dataset {hex(d)} not destroyed" for d in state.datasets]
    out += [f"model desc {hex(d)} not destroyed" for d in state.descs]
    out += [f"model {m} ({state.models[m].path}) not unloaded" for m in state.models]
    return out


def _write_leaks_at_exit() -> None:
    target = os.environ.get("ASCEND_LAB_SIM_LEAKS_FILE")
    if target:
        Path(target).write_text(json.dumps({"leaks": leaks(at_exit=True), "executions": state.executions,
                                            "traffic": traffic(), "inits": state.inits,
                                            "finalizes": state.finalizes}))


def _configure_from_env() -> None:
    configure(chip=os.environ.get("ASCEND_LAB_SIM_CHIP"),
              devices=int(os.environ["ASCEND_LAB_SIM_DEVICES"]) if os.environ.get("ASCEND_LAB_SIM_DEVICES") else None,
              cann_version=os.environ.get("ASCEND_LAB_SIM_CANN_VERSION") or None)
    for item in filter(None, os.environ.get("ASCEND_LAB_SIM_FAIL", "").split(",")):
        name, _, code = item.rpartition(":")
        fail_next(name, int(code))


_configure_from_env()
atexit.register(_write_leaks_at_exit)


class AclFail(Exception):
    """Raised inside an API function to return ``code`` through the documented return shape."""

    def __init__(self, code: int) -> None:
        self.code = code


def api(name: str, shape: str) -> Callable:
    """Wrap an API function: record the call, apply injected failures, map AclFail to the return shape.

    shape: "ret" (returns ret), "tuple" (returns (value, ret); value 0 on failure), "tuple_ds" (like tuple
    but the value is the first argument, as add_dataset_buffer), "value" (returns a value; 0 on failure).
    """

    def failed(code: int, args: tuple):
        if shape == "ret":
            return code
        if shape == "tuple":
            return 0, code
        if shape == "tuple_ds":
            return (args[0] if args else 0), code
        return 0

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            record(name)
            pending = state.failures.get(name)
            if pending:
                return failed(pending.pop(0), args)
            started = time.time_ns()
            try:
                return fn(*args, **kwargs)
            except AclFail as fail:
                return failed(fail.code, args)
            finally:
                for observer in API_OBSERVERS:
                    observer(name, started, time.time_ns())

        return wrapper

    return decorate


def check(condition: bool, code: int) -> None:
    if not condition:
        raise AclFail(code)


def require_init() -> None:
    check(state.initialized, ACL_ERROR_UNINITIALIZE)


def require_context() -> int:
    require_init()
    ctx = state.current_context
    check(ctx is not None and ctx in state.contexts, ACL_ERROR_RT_CONTEXT_NULL)
    return ctx


def find_region(ptr: int) -> tuple[Region, int]:
    """The region containing ``ptr`` and the offset into it."""
    for table in (state.regions, state.bytes_regions):
        for base, region in table.items():
            if base <= ptr < base + max(region.size, 1):
                return region, ptr - base
    raise AclFail(ACL_ERROR_RT_PARAM_INVALID)


def np_dtype(name: str) -> np.dtype:
    return np.dtype(name)


def nbytes(dims: list[int], dtype: str) -> int:
    return int(np.prod(dims, dtype=np.int64)) * np_dtype(dtype).itemsize
