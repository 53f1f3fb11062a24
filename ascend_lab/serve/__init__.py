"""task=serve: an OpenAI-compatible HTTP server over the prepared engine (:mod:`ascend_lab.serve.app`), its
iteration-level scheduler (:mod:`ascend_lab.serve.scheduler`) and Prometheus figures (:mod:`ascend_lab.serve.metrics`)."""
