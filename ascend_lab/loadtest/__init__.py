"""task=loadtest: a maintained load generator (:mod:`ascend_lab.loadtest.generator`) against an OpenAI-compatible
endpoint, figures with vLLM's definitions (:mod:`ascend_lab.loadtest.figures`), a sweep's throughput-latency summary
(:mod:`ascend_lab.loadtest.summary`)."""
