"""task=bench: measure one configuration (runtime × model × batch size × scenario).

Prepares what the runtime loads (export and, where ``atc`` exists, compile, through their
caches), loads it (``load_seconds``), runs the scenario and logs every figure, the artifact it
measured (``onnx_sha256`` / ``om_sha256``) and the runtime chosen with its reason. Beside them: the
energy, utilisation and peak memory of the timed window (:mod:`ascend_lab.telemetry`), and for
``generate`` the memory-bandwidth roofline of the decode (``roofline_tokens_s``, ``roofline_fraction``).
Sweep it with ``-m``: ``python -m ascend_lab.run -m task=bench benchmark.batch_size=1,4,8``.
With ``profile=on`` the scenario runs once more under the runtime's profiler after the timed figures are final
(:mod:`ascend_lab.profiling`); with ``search.accuracy`` the configuration's accuracy is measured after the runtime is
closed (:mod:`ascend_lab.tuning.accuracy_check`).
"""

from __future__ import annotations

from ascend_lab.bench.roofline import generate_roofline
from ascend_lab.bench.scenarios import make_inputs, run_forward, run_generate
from ascend_lab.bench.summary import Row
from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.errors import ConfigError
from ascend_lab.prepare import open_engine
from ascend_lab.report import format_number, format_table
from ascend_lab.telemetry import bench_figures, work_device
from ascend_lab.telemetry.energy import Figures

# Figures shown on the console after a run (all of them are logged).
SHOWN = ("latency_ms_mean", "latency_ms_p50", "latency_ms_p99", "throughput_samples_s", "throughput_tokens_s",
         "ttft_ms_mean", "tpot_ms_mean", "tpot_ms_p99", "decode_tokens_s", "e2e_ms_mean", "npu_compute_ms_mean",
         "h2d_ms_mean", "d2h_ms_mean", "npu_throughput_samples_s", "h2d_bytes_per_token", "d2h_bytes_per_token",
         "d2d_bytes_per_token", "runtime_calls_per_token", "prefill_executions", "host_peak_rss_mb",
         "host_rss_growth_mb", "device_peak_mb", "load_seconds", "iterations", "roofline_tokens_s",
         "roofline_fraction", "energy_j", "joules_per_token", "power_w_mean", "power_w_max",
         "device_utilization_pct_mean", "peak_memory_mb", "threads")


def run(cfg: AppConfig, ctx: JobContext) -> Row:
    bench = cfg.benchmark
    _require_inputs_fit(bench)
    ctx.tracker.set_tags({"model": cfg.model.name, "batch_size": bench.batch_size, "scenario": bench.scenario})
    with open_engine(cfg, ctx) as loaded:
        plan, runtime, device, timer = loaded.plan, loaded.runtime, ctx.device, loaded.timer
        tokenizer = loaded.tokenizer if bench.input_source == "prompt" else None
        input_ids, attention_mask = make_inputs(bench, bench.batch_size, runtime.contract.dims.vocab_size, cfg.seed,
                                                tokenizer)
        prompt_len = input_ids.shape[1]
        work = work_device(plan.name, device, cfg.device.index)
        roofline_figures = Figures()
        engine = None  # the scenario's generation engine, where it uses one (the profiled pass reuses it)
        if bench.scenario == "generate":
            engine = loaded.engine(prompt_len + bench.new_tokens)
            result = run_generate(engine, input_ids, attention_mask, bench, timer, runtime, device, plan.name)
            if cfg.telemetry.roofline:  # while the runtime is loaded: pyACL's device stays initialised
                roofline_figures = generate_roofline(
                    cfg.telemetry, ctx.path(cfg.telemetry.bandwidth_cache_dir), work, device, runtime.contract,
                    bench.batch_size, prompt_len, bench.new_tokens, *_weights_read(plan, runtime),
                    result.metrics.get("decode_tokens_s"))
        elif runtime.contract.graph == "kv_cache":  # this graph's forward pass is the prompt's prefill
            engine = loaded.engine(prompt_len + 1)
            engine.prepare(bench.batch_size, prompt_len, 1)
            result = run_forward(lambda: engine.prefill(input_ids, attention_mask), bench.batch_size, prompt_len,
                                 bench, timer, runtime, device, plan.name)
        else:
            fn = runtime.bind({"input_ids": input_ids, "attention_mask": attention_mask})
            result = run_forward(fn, bench.batch_size, prompt_len, bench, timer, runtime, device, plan.name)
        # The timed figures above are final; the profiled pass runs apart from them (profile=on).
        profile = loaded.profile(engine, input_ids, attention_mask) if cfg.profile.enabled else None
    metrics = {**result.metrics, "load_seconds": loaded.load_seconds, "prepare_seconds": plan.prepare_seconds,
               "seq_len": float(input_ids.shape[1]),
               **({"threads": float(runtime.threads)} if runtime.threads else {})}
    # Tokens the timed window processed: generated ones (generate) or prompt ones (forward), every iteration.
    window_tokens = bench.batch_size * (bench.new_tokens if bench.scenario == "generate" else prompt_len) \
        * int(result.metrics["iterations"])
    telemetry = bench_figures(window_tokens, work, metrics)
    metrics.update({**telemetry.metrics, **roofline_figures.metrics})
    ctx.tracker.set_tags({**telemetry.tags, **roofline_figures.tags,
                          "telemetry.work_device": f"{work.kind}:{work.index}"})
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_dict({"scenario": bench.scenario, "samples_ms": result.samples_ms}, "latency_samples.json")
    title = (f"bench: {cfg.model.name} on {plan.name} ({device.label}), {bench.scenario}, "
             f"batch {bench.batch_size}, seq {input_ids.shape[1]}"
             + (f", {runtime.threads} threads" if runtime.threads else "")
             + (f", {bench.new_tokens} new tokens" if bench.scenario == "generate" else ""))
    print(format_table(["metric", "value"], [(k, format_number(metrics[k])) for k in SHOWN if k in metrics], title=title))
    if profile is not None:
        print(profile.log(ctx.tracker, cfg.profile.top_n, f"profile: {title}"))
        metrics.update(profile.metrics)
    if cfg.search.accuracy:  # after the runtime is closed: the check opens the reference and the candidate itself
        metrics.update(accuracy_figures(cfg, ctx))
    return Row(batch_size=bench.batch_size, runtime=plan.name, scenario=bench.scenario, model=cfg.model.name,
               metrics=metrics)


def accuracy_figures(cfg: AppConfig, ctx: JobContext) -> dict[str, float]:
    """search.accuracy: this configuration against the accuracy group's reference (task=accuracy's metrics and gate,
    :mod:`ascend_lab.tuning.accuracy_check`)."""
    from ascend_lab.tuning.accuracy_check import measure_accuracy

    return measure_accuracy(cfg, ctx)


def _weights_read(plan, runtime) -> tuple[int, str]:
    """(bytes of weights one decode step reads, where that figure comes from), for the roofline."""
    from ascend_lab.bench import roofline

    if plan.exported is not None:  # onnxruntime and pyACL run this graph (pyACL: compiled from it)
        graph = plan.onnx_path
        return roofline.step_weight_bytes(graph), f"initializers a step reads in {graph.parent.name}/{graph.name}"
    return roofline.parameter_bytes(runtime.model.parameters()), "parameters of the torch model"


def _require_inputs_fit(bench) -> None:
    """A batch whose int64 ids and mask alone exceed host memory fails here, not in numpy."""
    import psutil

    need = 2 * bench.batch_size * bench.seq_len * 8
    total = psutil.virtual_memory().total
    if need > total:
        raise ConfigError("benchmark.batch_size", bench.batch_size, (
            f"the [{bench.batch_size}, {bench.seq_len}] input ids and mask alone need {need / 2**30:,.0f} GiB, more "
            f"than this host's {total / 2**30:,.0f} GiB; use a smaller benchmark.batch_size or benchmark.seq_len"))
