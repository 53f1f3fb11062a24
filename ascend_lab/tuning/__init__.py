"""Tuning: finding the fastest configuration that is still accurate.

- :mod:`~ascend_lab.tuning.accuracy_check`: a bench job's accuracy figures next to its speed (``search.accuracy``),
  through task=accuracy's own comparison, metrics and gate (:mod:`ascend_lab.accuracy`);
- :mod:`~ascend_lab.tuning.objective`: what a trial of an automatic search returns (``search.objective``): the
  metric, or a penalty when the p99 TPOT bound is broken;
- :mod:`~ascend_lab.tuning.sampler`: Optuna's TPE sampler with the default configuration as the first trial, so
  every search measures the baseline it is compared with;
- :mod:`~ascend_lab.tuning.report`: the search's parent-run report (trials plot, ``best_overrides.txt``, the best
  configuration against the default), called through the sweep's summarizer hook.

The presets that use them: ``conf/experiment/atc_tuning.yaml`` (ATC settings as sweep axes, each job with its
accuracy) and ``conf/hparams_search/*.yaml`` (the Optuna search). AOE tuning at compile time lives with the
compile (:mod:`ascend_lab.compile.aoe`).
"""
