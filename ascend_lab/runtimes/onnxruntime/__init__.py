"""runtime=onnxruntime: the exported graph in an InferenceSession (config, runtime, trace parser)."""
