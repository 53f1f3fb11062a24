"""Profiling: where a run's time goes, the same way on every runtime (``profile=on``); what is runtime-independent.

- :mod:`~ascend_lab.profiling.events`: the one event format (operator, compute or copy, start, duration, phase)
  and what a runtime's profiling hook hands back (:class:`~ascend_lab.profiling.events.TraceFile`, which carries
  its format's parser);
- :mod:`~ascend_lab.profiling.msprof`: CANN's op_summary / kernel_details CSVs, which pyACL's profiling API and
  torch_npu both write;
- :mod:`~ascend_lab.profiling.table`: the operator table (``ops.csv``), the top-operator chart and the three
  shares (top operator, host↔device copies, host gaps);
- :mod:`~ascend_lab.profiling.profiled_pass`: the profiled pass after the timed one, and what it logs.

Each runtime's capture and its own trace parser live in its package (``ascend_lab/runtimes/<name>/profiler.py``,
``trace.py``) behind the one hook :meth:`Runtime.profiled <ascend_lab.runtimes.base.Runtime.profiled>`; nothing here
imports a runtime (the import-linter layers in pyproject.toml check it).
"""
