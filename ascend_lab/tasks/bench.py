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

import logging
import time

from ascend_lab.bench.scenarios import make_inputs, run_forward, run_generate
from ascend_lab.bench.summary import Row, figure_text
from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.errors import ConfigError
from ascend_lab.prepare import plan_runtime
from ascend_lab.report import format_table
from ascend_lab.runtimes.select import open_runtime, tokenizer_for
from ascend_lab.telemetry import bench_figures, work_device
from ascend_lab.telemetry.bandwidth import generate_roofline
from ascend_lab.telemetry.energy import Figures

log = logging.getLogger(__name__)

# Figures shown on the console after a run (all of them are logged).
SHOWN = ("latency_ms_mean", "latency_ms_p50", "latency_ms_p99", "throughput_samples_s", "throughput_tokens_s",
         "ttft_ms_mean", "tpot_ms_mean", "tpot_ms_p99", "decode_tokens_s", "e2e_ms_mean", "npu_compute_ms_mean",
         "h2d_ms_mean", "d2h_ms_mean", "npu_throughput_samples_s", "h2d_bytes_per_token", "d2h_bytes_per_token",
         "d2d_bytes_per_token", "runtime_calls_per_token", "prefill_executions", "host_peak_rss_mb",
         "host_rss_growth_mb", "device_peak_mb", "load_seconds", "huge_page_gb", "iterations", "roofline_tokens_s",
         "roofline_fraction", "energy_j", "joules_per_token", "power_w_mean", "power_w_max",
         "device_utilization_pct_mean", "peak_memory_mb")


def timer_for(runtime_name: str, device):
    """Device events (or a synchronised host clock) for torch; the host clock for runtimes whose
    calls return when the work is done (onnxruntime, pyACL)."""
    return device.timer if runtime_name == "torch" else device.host_timer


def load_figures(runtime) -> dict[str, float]:
    """What loading did besides taking ``load_seconds``: the weights moved to huge pages (host runtimes)."""
    return runtime.huge_pages.metrics() if runtime.huge_pages is not None else {}


def engine_for(runtime, cfg: AppConfig, max_tokens: int, tracker):
    """The runtime's generation engine, its kind and notes recorded as tags."""
    engine = runtime.engine(max_tokens, tuple(cfg.export.prefill_chunks), cfg.export.kv_capacity)
    tracker.set_tags({"engine": type(engine).__name__,
                      **({"engine.notes": "; ".join(engine.notes)} if engine.notes else {})})
    return engine


def run(cfg: AppConfig, ctx: JobContext) -> Row:
    bench = cfg.benchmark
    _require_inputs_fit(bench)
    plan = plan_runtime(cfg, ctx)
    ctx.tracker.set_tags({**plan.tags(), "model": cfg.model.name, "batch_size": bench.batch_size,
                          "scenario": bench.scenario})
    log.info("runtime %s (%s)", plan.name, plan.reason)
    device = ctx.device_for(plan.name)
    started = time.perf_counter()
    runtime = open_runtime(plan, cfg, device)
    load_seconds = time.perf_counter() - started
    with runtime:
        tokenizer = tokenizer_for(cfg, runtime) if bench.input_source == "prompt" else None
        input_ids, attention_mask = make_inputs(bench, bench.batch_size, runtime.contract.dims.vocab_size, cfg.seed,
                                                tokenizer)
        timer = timer_for(plan.name, device)
        prompt_len = input_ids.shape[1]
        work = work_device(plan.name, device, cfg.device.index)
        roofline_figures = Figures()
        engine = None  # the scenario's generation engine, where it uses one (the profiled pass reuses it)
        if bench.scenario == "generate":
            engine = engine_for(runtime, cfg, prompt_len + bench.new_tokens, ctx.tracker)
            result = run_generate(engine, input_ids, attention_mask, bench, timer, runtime, device, plan.name)
            if cfg.telemetry.roofline:  # while the runtime is loaded: pyACL's device stays initialised
                roofline_figures = generate_roofline(
                    cfg.telemetry, ctx.path(cfg.telemetry.bandwidth_cache_dir), work, device, runtime.contract,
                    bench.batch_size, prompt_len, bench.new_tokens, *_weights_read(plan, runtime),
                    result.metrics.get("decode_tokens_s"))
        elif runtime.contract.graph == "kv_cache":  # this graph's forward pass is the prompt's prefill
            engine = engine_for(runtime, cfg, prompt_len + 1, ctx.tracker)
            engine.prepare(bench.batch_size, prompt_len, 1)
            result = run_forward(lambda: engine.prefill(input_ids, attention_mask), bench.batch_size, prompt_len,
                                 bench, timer, runtime, device, plan.name)
        else:
            fn = runtime.bind({"input_ids": input_ids, "attention_mask": attention_mask})
            result = run_forward(fn, bench.batch_size, prompt_len, bench, timer, runtime, device, plan.name)
        # The timed figures above are final; the profiled pass runs apart from them (profile=on).
        profile = profiled_pass(cfg, ctx, runtime, engine, input_ids, attention_mask, timer) \
            if cfg.profile.enabled else None
    metrics = {**result.metrics, "load_seconds": load_seconds, "prepare_seconds": plan.prepare_seconds,
               "seq_len": float(input_ids.shape[1]), **load_figures(runtime)}
    # Tokens the timed window processed: generated ones (generate) or prompt ones (forward), every iteration.
    window_tokens = bench.batch_size * (bench.new_tokens if bench.scenario == "generate" else prompt_len) \
        * int(result.metrics["iterations"])
    telemetry = bench_figures(window_tokens, work, metrics)
    metrics.update({**telemetry.metrics, **roofline_figures.metrics})
    ctx.tracker.set_tags({**telemetry.tags, **roofline_figures.tags,
                          "telemetry.work_device": f"{work.kind}:{work.index}"})
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_dict({"scenario": bench.scenario, "samples_ms": result.samples_ms}, "latency_samples.json")
    title = (f"bench: {cfg.model.name} on {plan.name} ({device.torch_device}), {bench.scenario}, "
             f"batch {bench.batch_size}, seq {input_ids.shape[1]}"
             + (f", {bench.new_tokens} new tokens" if bench.scenario == "generate" else ""))
    print(format_table(["metric", "value"], [(k, figure_text(metrics[k])) for k in SHOWN if k in metrics], title=title))
    if profile is not None:
        print(profile.log(ctx.tracker, cfg.profile.top_n, f"profile: {title}"))
        metrics.update(profile.metrics)
    if cfg.search.accuracy:  # after the runtime is closed: the check opens the reference and the candidate itself
        metrics.update(accuracy_figures(cfg, ctx))
    return Row(batch_size=bench.batch_size, runtime=plan.name, scenario=bench.scenario, model=cfg.model.name,
               metrics=metrics)


def profiled_pass(cfg: AppConfig, ctx: JobContext, runtime, engine, input_ids, attention_mask, timer,
                  scenario: str | None = None):
    """The scenario (``benchmark.scenario`` unless given; task=infer: generate) once more under the runtime's
    profiler (:mod:`ascend_lab.profiling`): a generation's prefill and decode steps, or forward passes (the kv_cache
    graph's prefill, or the graph's plain run)."""
    from ascend_lab.profiling.profiled_pass import PROFILE_FOLDER, profile_forward, profile_generate

    bench, settings = cfg.benchmark, cfg.profile
    out_dir, prompt_len = ctx.output_dir / PROFILE_FOLDER, input_ids.shape[1]
    toolkit = cfg.atc.toolkit_home
    if (scenario or bench.scenario) == "generate":
        return profile_generate(runtime, engine, lambda rt: engine_for(rt, cfg, prompt_len + bench.new_tokens,
                                                                       ctx.tracker),
                                settings, out_dir, input_ids, attention_mask, bench.new_tokens, timer, toolkit)
    if engine is not None:  # the kv_cache graph: its forward pass is the prompt's prefill

        def prefill_on(rt):
            other = engine_for(rt, cfg, prompt_len + 1, ctx.tracker)
            other.prepare(bench.batch_size, prompt_len, 1)
            return lambda: other.prefill(input_ids, attention_mask)

        return profile_forward(runtime, lambda: engine.prefill(input_ids, attention_mask), prefill_on, settings,
                               out_dir, timer, toolkit)
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    return profile_forward(runtime, runtime.bind(feeds), lambda rt: rt.bind(feeds), settings, out_dir, timer, toolkit)


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
