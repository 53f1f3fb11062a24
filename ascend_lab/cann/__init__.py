"""Ascend CANN on this host: :mod:`~ascend_lab.cann.toolkit` finds the toolkit (``set_env.sh``, ``atc``, pyACL)
and :mod:`~ascend_lab.cann.npu_smi` reads the driver's ``npu-smi``."""
