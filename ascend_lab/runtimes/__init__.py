"""Runtimes: one small interface (:class:`ascend_lab.runtimes.base.Runtime`) and its torch,
onnxruntime and pyACL implementations."""
