"""Accuracy of one candidate against one reference (``task=accuracy``, the export's parity check).

- :mod:`~ascend_lab.accuracy.metrics`: the one definition of each metric (cosine, max |Δ|, relative L2,
  KL, top-1 agreement, top-5 overlap, common-prefix length); pure numpy.
- :mod:`~ascend_lab.accuracy.compare`: running the same prompts through two runtimes' generation engines
  (teacher-forced and free-running) and the debug graph's layer outputs, into per-step figures.
- :mod:`~ascend_lab.accuracy.gate`: the thresholds' verdict and the error a failed gate raises.
- :mod:`~ascend_lab.accuracy.report`: the per-prompt and per-layer tables, the plots and what is logged.

These modules import no runtime, Hydra or MLflow at import time, and nothing that plans or opens one: the export's
parity check uses them from below. Planning and opening both sides (:mod:`ascend_lab.accuracy_measure`, beside
:mod:`ascend_lab.prepare`) is what task=accuracy reports and a tuning sweep's jobs record; the task
(:mod:`ascend_lab.tasks.accuracy`) writes and logs the report.
"""
