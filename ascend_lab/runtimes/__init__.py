"""Runtimes as plugins: one package per runtime (``torch``, ``onnxruntime``, ``acl``), each with its config
(``config.py``, an option of the ``runtime`` group), the runtime and its cache backend (``runtime.py``) and its
profiler. What they share: the interface (:mod:`~ascend_lab.runtimes.base`) and the generation engines over it
(:mod:`~ascend_lab.runtimes.engine`). The runtime packages never import each other.

The group's options are listed in :mod:`~ascend_lab.runtimes.registry`. Opening one is
:func:`ascend_lab.prepare.open_engine`'s business: it prepares the artifact the runtime's config declares
(``artifact``) and instantiates the class its ``_target_`` names.
"""
