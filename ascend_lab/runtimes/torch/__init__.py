"""runtime=torch: the model in PyTorch (config, runtime, static-cache decoder, profiler)."""
