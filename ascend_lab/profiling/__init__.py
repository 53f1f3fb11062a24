"""Profiling: where a run's time goes, the same way on every runtime (``profile=on``).

- :mod:`~ascend_lab.profiling.events`: the one event format (operator, compute or copy, start, duration, phase)
  and what a runtime's profiling hook hands back (:class:`~ascend_lab.profiling.events.TraceFile`);
- one parser per trace format: :mod:`~ascend_lab.runtimes.torch.trace` (torch.profiler's Chrome trace),
  :mod:`~ascend_lab.runtimes.onnxruntime.trace` (onnxruntime's profile JSON), :mod:`~ascend_lab.profiling.msprof`
  (CANN's op_summary / kernel_details CSVs, from pyACL's profiling API or torch_npu);
- :mod:`~ascend_lab.profiling.table`: the operator table (``ops.csv``), the top-operator chart and the three
  shares (top operator, host↔device copies, host gaps);
- :mod:`~ascend_lab.runtimes.torch.profiler`: torch.profiler / torch_npu.profiler sessions for the torch runtime;
  :mod:`~ascend_lab.runtimes.acl.profiler`: pyACL's profiling API (``acl.prof``) sessions for the acl runtime;
- :mod:`~ascend_lab.profiling.profiled_pass`: the profiled pass after the timed one, and what it logs.

The runtimes only expose :meth:`Runtime.profiled <ascend_lab.runtimes.base.Runtime.profiled>`; nothing here
imports a runtime, torch or onnxruntime at import time.
"""
