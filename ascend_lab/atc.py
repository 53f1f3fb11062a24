"""ATC: compiling the exported ONNX graph into an Ascend offline model (.om).

Three layers, each usable alone:
- pure: :func:`derive_input_shapes` (graph inputs + config → ``--input_shape`` and gears) and
  :func:`build_atc_command` (→ argv); no files, no subprocesses;
- the edge: :func:`load_environment` (CANN's ``set_env.sh`` captured once) and :func:`run_atc`
  (the subprocess, streamed to the console and a log, killed as a process group on timeout);
- :func:`ensure_compiled`: the cached, tracked compile that tasks call.

ATC's contract (CANN docs): ``<output>.om`` or ``<output>_<os>_<arch>.om`` is written, success
prints :data:`SUCCESS_LINE`, failures print ``E#####`` codes; the exit status is not documented,
so success needs all three signs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ascend_lab import cann
from ascend_lab.config.atc import MAX_GEARS, AtcConfig
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.errors import AscendLabError, ConfigError, ToolchainError
from ascend_lab.provenance import digest_mismatch, sha256_files

if TYPE_CHECKING:
    from ascend_lab.config import AppConfig
    from ascend_lab.context import JobContext
    from ascend_lab.export import ExportedModel

log = logging.getLogger(__name__)

SUCCESS_LINE = "ATC run success, welcome to the next use."
# Ascend error codes: E10001, E19010, EZ9999, EE1001 ...
ERROR_CODE = re.compile(r"\bE[0-9A-Z]{2}\d{3}\b")
LOG_TAIL_LINES = 25
MANIFEST = "compile.json"

# Symbolic dim names the exporters use → the role that sizes them.
_DIM_ROLES = {
    "batch": "batch", "batch_size": "batch", "b": "batch",
    "seq": "seq", "seq_len": "seq", "sequence": "seq", "sequence_length": "seq",
    "past_seq": "past_seq", "past_seq_len": "past_seq", "past_len": "past_seq", "past_sequence_length": "past_seq",
    "total_seq": "total_seq", "total_seq_len": "total_seq", "total_sequence_length": "total_seq",
    "past_seq+seq": "total_seq", "seq+past_seq": "total_seq", "all_seq": "total_seq",
}


class AtcError(AscendLabError):
    """ATC ran and failed (error codes, missing success line or output, timeout)."""


# ---------------------------------------------------------------------------------------------
# Graph inputs and shape derivation (pure)


@dataclass(frozen=True)
class GraphInput:
    name: str
    dims: tuple[int | str | None, ...]  # int: fixed; str: symbolic name; None: unnamed dynamic
    dtype: str = "float32"


@dataclass
class InputShapes:
    """What ``--input_shape`` and the gear flags say, per graph input in graph order."""

    dims: dict[str, list[str]]  # input name → ATC dim tokens ("16", "-1", "1~8")
    mode: str = "static"
    batch_gears: list[int] | None = None
    dims_gears: list[list[int]] | None = None

    @property
    def input_shape(self) -> str:
        return ";".join(f"{name}:{','.join(tokens)}" for name, tokens in self.dims.items())


def dim_role(symbol: str | None) -> str | None:
    """batch / seq / past_seq / total_seq for an exporter's symbolic dim name, else None."""
    if not symbol:
        return None
    return _DIM_ROLES.get(symbol.strip().lower().replace(" ", ""))


def read_graph_inputs(onnx_path: Path, dynamic_axes: Mapping[str, Mapping[Any, str]] | None = None) -> list[GraphInput]:
    """The ONNX graph's real inputs (initializers excluded); unnamed dynamic dims are named from
    ``dynamic_axes`` (the exporter's ``{input: {axis: name}}``) where it has them."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        axes = {int(k): v for k, v in ((dynamic_axes or {}).get(value.name) or {}).items()}
        tensor = value.type.tensor_type
        dims: list[int | str | None] = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim_role(dim.dim_param):
                dims.append(dim.dim_param)
            else:
                dims.append(axes.get(axis) or (dim.dim_param or None))
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        except Exception:  # noqa: BLE001 - an exotic dtype only affects the label
            dtype = str(tensor.elem_type)
        inputs.append(GraphInput(value.name, tuple(dims), dtype))
    return inputs


def _shape_template(graph_inputs: Sequence[GraphInput]) -> str:
    return ";".join(f"{g.name}:{','.join(str(d) if isinstance(d, int) else 'N' for d in g.dims)}" for g in graph_inputs)


def _parse_input_shape(text: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for entry in text.split(";"):
        name, _, dims = entry.rpartition(":")
        parsed[name] = dims.split(",") if dims else []
    return parsed


def derive_input_shapes(graph_inputs: Sequence[GraphInput], atc_cfg: AtcConfig,
                        benchmark_cfg: BenchmarkConfig) -> InputShapes:
    """``--input_shape`` tokens and gears for ``graph_inputs`` under ``atc_cfg.dynamic_mode``.

    Symbolic dims are sized by role: batch → benchmark.batch_size, seq → benchmark.seq_len,
    past_seq → atc.past_seq_len (ATC rejects 0-sized static dims), total_seq → past + seq.
    Raises :class:`ConfigError` naming the key to change when the graph and config disagree.
    """
    if atc_cfg.input_shape:
        return _explicit_shapes(graph_inputs, atc_cfg, benchmark_cfg)
    mode = atc_cfg.dynamic_mode
    batch, seq = benchmark_cfg.batch_size, benchmark_cfg.seq_len
    past = atc_cfg.past_seq_len or benchmark_cfg.seq_len
    static = {"batch": batch, "seq": seq, "past_seq": past, "total_seq": past + seq}
    dynamic_roles: set[str] = set()
    if mode == "dynamic_batch_size":
        dynamic_roles = {"batch"}
    elif mode == "dynamic_dims":
        dynamic_roles = set(atc_cfg.dynamic_dim_names)
        if dynamic_roles & {"seq", "past_seq"}:
            dynamic_roles.add("total_seq")
    if mode == "shape_range":
        max_batch, max_seq = max(benchmark_cfg.batch_sizes), atc_cfg.max_seq_len or seq
        bounds = {"batch": (1, max_batch), "seq": (1, max_seq), "past_seq": (0, past), "total_seq": (1, past + max_seq)}

    dims: dict[str, list[str]] = {}
    slots: list[tuple[str, int, str]] = []  # (input, axis, role) of every -1, in --input_shape order
    for graph_input in graph_inputs:
        tokens = []
        for axis, dim in enumerate(graph_input.dims):
            if isinstance(dim, int) and dim > 0:
                tokens.append(str(dim))
                continue
            role = dim_role(dim) if isinstance(dim, str) else None
            if role is None:
                raise ConfigError("atc.input_shape", None,
                                  f"cannot size dim {axis} ({dim!r}) of graph input {graph_input.name!r}; set it "
                                  f"explicitly, e.g. atc.input_shape='{_shape_template(graph_inputs)}'")
            if role in dynamic_roles:
                tokens.append("-1")
                slots.append((graph_input.name, axis, role))
            elif mode == "shape_range":
                lo, hi = bounds[role]
                tokens.append(f"{lo}~{hi}" if hi > lo else str(hi))
            else:
                tokens.append(str(static[role]))
        dims[graph_input.name] = tokens

    shapes = InputShapes(dims, mode)
    if mode == "dynamic_batch_size":
        if not slots:
            raise ConfigError("atc.dynamic_mode", mode, "the graph has no batch dim to make dynamic "
                              f"(inputs: {_shape_template(graph_inputs)})")
        shapes.batch_gears = _batch_gears(atc_cfg, benchmark_cfg)
    elif mode == "dynamic_dims":
        shapes.dims_gears = _expand_dims_gears(atc_cfg, slots, static)
    return shapes


def _batch_gears(atc_cfg: AtcConfig, benchmark_cfg: BenchmarkConfig) -> list[int]:
    key, gears = ("atc.dynamic_batch_sizes", atc_cfg.dynamic_batch_sizes) if atc_cfg.dynamic_batch_sizes \
        else ("benchmark.batch_sizes", benchmark_cfg.batch_sizes)
    if not 1 < len(gears) <= MAX_GEARS:
        raise ConfigError(key, gears, f"dynamic_batch_size needs 2 to {MAX_GEARS} batch gears "
                                      "(set atc.dynamic_batch_sizes, or use atc.dynamic_mode=static)")
    if len(set(gears)) != len(gears):
        raise ConfigError(key, gears, "batch gears must be distinct")
    return list(gears)


def _expand_dims_gears(atc_cfg: AtcConfig, slots: list[tuple[str, int, str]],
                       static: dict[str, int]) -> list[list[int]]:
    """Gears as ATC wants them, one value per -1: given per -1 already, or per dynamic dim name
    (``batch,seq`` → every batch and seq -1, total_seq = past + seq)."""
    names = list(atc_cfg.dynamic_dim_names)
    if not slots:
        raise ConfigError("atc.dynamic_dim_names", names, "none of these dims occurs in the graph's inputs")
    order = ", ".join(f"{name}[{axis}]({role})" for name, axis, role in slots)
    gears = []
    for text in atc_cfg.dynamic_dims or []:
        values = [int(v) for v in text.split(",")]
        if len(values) == len(names):
            sizes = {**static, **dict(zip(names, values, strict=True))}
            sizes["total_seq"] = sizes["past_seq"] + sizes["seq"]
            values = [sizes[role] for _, _, role in slots]
        elif len(values) != len(slots):
            raise ConfigError("atc.dynamic_dims", atc_cfg.dynamic_dims,
                              f"gear {text!r} needs {len(names)} values (one per atc.dynamic_dim_names: "
                              f"{','.join(names)}) or {len(slots)} (one per -1: {order})")
        gears.append(values)
    if len({tuple(g) for g in gears}) != len(gears):
        raise ConfigError("atc.dynamic_dims", atc_cfg.dynamic_dims, "gears must be distinct")
    return gears


def _explicit_shapes(graph_inputs: Sequence[GraphInput], atc_cfg: AtcConfig,
                     benchmark_cfg: BenchmarkConfig) -> InputShapes:
    """atc.input_shape as given, checked against the graph so mistakes fail before ATC runs."""
    parsed = _parse_input_shape(atc_cfg.input_shape)
    by_name = {g.name: g for g in graph_inputs}
    key, value, mode = "atc.input_shape", atc_cfg.input_shape, atc_cfg.dynamic_mode
    for name, tokens in parsed.items():
        if name not in by_name:
            raise ConfigError(key, value, f"{name!r} is not a graph input; inputs are {', '.join(by_name)}")
        if len(tokens) != len(by_name[name].dims):
            raise ConfigError(key, value, f"{name} has {len(by_name[name].dims)} dims in the graph, not {len(tokens)}")
    for g in graph_inputs:
        if g.name not in parsed and not all(isinstance(d, int) and d > 0 for d in g.dims):
            raise ConfigError(key, value, f"graph input {g.name!r} has dynamic dims and needs a shape here")
    tokens = [(name, axis, t) for name, ts in parsed.items() for axis, t in enumerate(ts)]
    minus_ones = [(name, axis) for name, axis, t in tokens if t == "-1"]
    ranges = [t for _, _, t in tokens if "~" in t]
    shapes = InputShapes({g.name: parsed[g.name] for g in graph_inputs if g.name in parsed}, mode)
    if mode == "static" and (minus_ones or ranges):
        raise ConfigError(key, value, "-1 and lo~hi ranges need a dynamic atc.dynamic_mode "
                                      "(dynamic_batch_size, dynamic_dims or shape_range)")
    if mode in ("dynamic_batch_size", "dynamic_dims") and (ranges or not minus_ones):
        raise ConfigError(key, value, f"dynamic_mode={mode} needs -1 in the dynamic dims and no ranges")
    if mode == "shape_range" and not (ranges or minus_ones):
        raise ConfigError(key, value, "dynamic_mode=shape_range needs lo~hi ranges (or -1) in some dims")
    if mode == "dynamic_batch_size":
        if any(axis != 0 for _, axis in minus_ones):
            raise ConfigError(key, value, "dynamic_batch_size allows -1 only in the batch dim (dim 0)")
        shapes.batch_gears = _batch_gears(atc_cfg, benchmark_cfg)
    elif mode == "dynamic_dims":
        gears = [[int(v) for v in g.split(",")] for g in atc_cfg.dynamic_dims or []]
        for gear in gears:
            if len(gear) != len(minus_ones):
                raise ConfigError("atc.dynamic_dims", atc_cfg.dynamic_dims,
                                  f"each gear needs {len(minus_ones)} values, one per -1 in atc.input_shape")
        shapes.dims_gears = gears
    return shapes


def build_atc_command(atc_cfg: AtcConfig, onnx_path: str | Path, input_shapes: InputShapes,
                      output_prefix: str | Path) -> list[str]:
    """The ATC argv (``atc`` first): ONNX → ``<output_prefix>*.om``. Pure."""
    argv = [
        "atc", "--framework=5", f"--model={onnx_path}", f"--output={output_prefix}",
        f"--soc_version={atc_cfg.soc_version}", f"--input_format={atc_cfg.input_format}",
        f"--input_shape={input_shapes.input_shape}",
    ]
    if input_shapes.batch_gears:
        argv.append("--dynamic_batch_size=" + ",".join(map(str, input_shapes.batch_gears)))
    if input_shapes.dims_gears:
        argv.append("--dynamic_dims=" + ";".join(",".join(map(str, g)) for g in input_shapes.dims_gears))
    if atc_cfg.precision_mode:
        argv.append(f"--precision_mode={atc_cfg.precision_mode}")
    if atc_cfg.precision_mode_v2:
        argv.append(f"--precision_mode_v2={atc_cfg.precision_mode_v2}")
    if atc_cfg.op_select_implmode:
        argv.append(f"--op_select_implmode={atc_cfg.op_select_implmode}")
    argv.append(f"--log={atc_cfg.log}")
    argv.extend(atc_cfg.extra_args)
    return argv


def cache_key(onnx_sha256: str, argv: Sequence[str], toolkit_version: str | None) -> str:
    """What determines the .om: the ONNX bytes, every setting flag, the CANN version.

    Paths (--model, --output) and --log do not change the model, so they are left out.
    """
    settings = [a for a in argv[1:] if not a.startswith(("--model=", "--output=", "--log="))]
    blob = json.dumps({"onnx": onnx_sha256, "settings": settings, "cann": toolkit_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The CANN environment and the subprocess


@dataclass
class AtcEnvironment:
    atc: Path | None
    set_env: Path | None
    env: dict[str, str] | None = None  # None: the current environment
    looked: list[Path] = field(default_factory=list)  # the set_env.sh locations searched

    def describe(self, sourced: bool) -> str:
        if self.set_env is not None:
            how = "sourced" if sourced else "would be sourced"
            where = f"set_env.sh: {self.set_env} ({how}: bash -c 'source {self.set_env} && env -0')"
        else:
            where = ("set_env.sh: none found; running with the current environment (looked at: "
                     + ", ".join(map(str, self.looked)) + ")")
        return f"{where}\natc: {self.atc if self.atc else 'not found'}"


def locate_toolkit(atc_cfg: AtcConfig) -> AtcEnvironment:
    """Where set_env.sh and atc are, without running anything (what a dry run reports)."""
    return AtcEnvironment(atc=cann.find_atc(atc_cfg.toolkit_home), set_env=cann.find_set_env(atc_cfg.toolkit_home),
                          looked=cann.set_env_locations(atc_cfg.toolkit_home))


def capture_set_env(set_env: Path, timeout_s: float = 120.0) -> dict[str, str]:
    """The environment after ``source set_env.sh``, captured once (its own output goes to stderr)."""
    try:
        proc = subprocess.run(["bash", "-c", 'source "$1" 1>&2 && env -0', "bash", str(set_env)],
                              capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"could not load the CANN environment from {set_env}: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise ToolchainError(f"`source {set_env}` failed (exit status {proc.returncode}); fix the CANN install or "
                             f"point atc.toolkit_home elsewhere.\n{tail}")
    env = {}
    for item in proc.stdout.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep and key:
            env[key] = value
    return env


def load_environment(atc_cfg: AtcConfig) -> AtcEnvironment:
    """CANN's environment from set_env.sh when one is found, else the current one with atc on PATH."""
    located = locate_toolkit(atc_cfg)
    if located.set_env is None:
        return located
    env = capture_set_env(located.set_env)
    on_path = shutil.which("atc", path=env.get("PATH", ""))
    return AtcEnvironment(atc=Path(on_path) if on_path else located.atc, set_env=located.set_env, env=env,
                          looked=located.looked)


@dataclass
class CompileResult:
    returncode: int | None  # None when killed on timeout
    seconds: float
    log_path: Path
    timed_out: bool = False
    success_line: bool = False
    error_codes: list[str] = field(default_factory=list)
    tail: str = ""


def run_atc(argv: Sequence[str], env: Mapping[str, str] | None, timeout_s: float, log_path: Path) -> CompileResult:
    """Run ATC, streaming its output to the console and ``log_path``; on timeout kill its whole
    process group (ATC forks parallel kernel compilers)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    codes: dict[str, None] = {}
    seen_success = False
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write("$ " + shlex.join(argv) + "\n")
        log_file.flush()
        try:
            proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(env) if env is not None else None,
                                    start_new_session=True)
        except OSError as exc:
            raise ToolchainError(f"cannot start {argv[0]}: {exc}") from exc

        def pump() -> None:
            nonlocal seen_success
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace")
                log_file.write(line)
                log_file.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
                tail.append(line.rstrip("\n"))
                seen_success = seen_success or SUCCESS_LINE in line
                codes.update(dict.fromkeys(ERROR_CODE.findall(line)))

        reader = threading.Thread(target=pump, name="atc-output", daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        except BaseException:  # Ctrl-C: ATC runs in its own session, so it would not see the signal
            _kill_group(proc.pid)
            raise
        finally:
            reader.join(timeout=10)
            if reader.is_alive():  # a leftover child still holds the pipe open
                _kill_group(proc.pid)
                reader.join(timeout=10)
            proc.stdout.close()
        seconds = time.monotonic() - start
        if timed_out:
            log_file.write(f"\n[ascend_lab] killed after {timeout_s:g} s (atc.timeout_s)\n")
    return CompileResult(returncode=None if timed_out else proc.returncode, seconds=seconds, log_path=log_path,
                         timed_out=timed_out, success_line=seen_success, error_codes=list(codes),
                         tail="\n".join(tail))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def find_om(output_prefix: Path) -> Path | None:
    """``<prefix>.om`` or ``<prefix>_<os>_<arch>.om`` (ATC adds the suffix on some hosts)."""
    output_prefix = Path(output_prefix)
    found = sorted(output_prefix.parent.glob(glob_escape(output_prefix.name) + "*.om"))
    exact = output_prefix.with_name(output_prefix.name + ".om")
    return exact if exact in found else (found[0] if found else None)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def check_result(result: CompileResult, output_prefix: Path, timeout_s: float) -> Path:
    """The .om ATC wrote, or an :class:`AtcError` quoting the log tail and error codes."""
    codes = f"error codes: {', '.join(result.error_codes)}\n" if result.error_codes else ""
    details = f"Full log: {result.log_path}\n{codes}--- last lines of the ATC log ---\n{result.tail}"
    if result.timed_out:
        raise AtcError(f"ATC timed out after {timeout_s:g} s (atc.timeout_s) and was killed with its process "
                       f"group; raise atc.timeout_s for large models.\n{details}")
    if result.returncode != 0:
        raise AtcError(f"ATC failed (exit status {result.returncode}).\n{details}")
    if not result.success_line:
        raise AtcError(f"ATC exited 0 but never printed {SUCCESS_LINE!r}; treating the compile as failed.\n{details}")
    om = find_om(output_prefix)
    if om is None:
        raise AtcError(f"ATC reported success but no {output_prefix}*.om exists.\n{details}")
    return om


# ---------------------------------------------------------------------------------------------
# The cached, tracked compile


@dataclass
class CompiledModel:
    om_path: Path
    sha256: str
    onnx_sha256: str
    soc_version: str
    dynamic_mode: str
    batch_gears: list[int] | None
    dims_gears: list[list[int]] | None = None
    input_shape: str = ""
    cache_hit: bool = False
    compile_seconds: float | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class CompilePlan:
    """Everything about a compile that is known before ATC runs."""

    onnx_path: Path
    onnx_sha256: str
    shapes: InputShapes
    folder: Path  # the cache folder for these inputs
    stem: str  # the .om name without suffix
    argv: list[str]  # the command as run into ``folder``
    key: str

    @property
    def output_prefix(self) -> Path:
        return self.folder / self.stem

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


def plan_compile(cfg: "AppConfig", ctx: "JobContext", exported: "ExportedModel") -> CompilePlan:
    atc_cfg = cfg.atc
    graph_inputs = read_graph_inputs(exported.onnx_path, exported.dynamic_axes)
    shapes = derive_input_shapes(graph_inputs, atc_cfg, cfg.benchmark)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cfg.model.name}_{exported.graph}")
    probe = build_atc_command(atc_cfg, exported.onnx_path, shapes, stem)
    key = cache_key(exported.sha256, probe, cann.toolkit_version(atc_cfg.toolkit_home))
    folder = ctx.path(atc_cfg.output_dir) / f"{stem}_{atc_cfg.soc_version}_{key[:16]}"
    argv = build_atc_command(atc_cfg, exported.onnx_path, shapes, folder / stem)
    return CompilePlan(Path(exported.onnx_path), exported.sha256, shapes, folder, stem, argv, key)


def ensure_compiled(cfg: "AppConfig", ctx: "JobContext", exported: "ExportedModel", *,
                    required: bool = False, plan: CompilePlan | None = None) -> CompiledModel | None:
    """The .om for ``exported``: reused from the cache, or compiled with ATC.

    Returns None (tag ``compile_skipped`` says why) on a dry run, and when no ``atc`` exists
    unless ``required``, in which case that is a :class:`ToolchainError` naming where it looked.
    """
    atc_cfg, tracker = cfg.atc, ctx.tracker
    plan = plan or plan_compile(cfg, ctx, exported)
    tracker.set_tags({"onnx_sha256": plan.onnx_sha256, "atc_command": plan.command_line, "atc.cache_key": plan.key})

    if atc_cfg.dry_run:
        text = f"{plan.command_line}\n\n{locate_toolkit(atc_cfg).describe(sourced=False)}\n"
        print("ATC dry run (atc.dry_run=true), not executed:\n" + text)
        tracker.log_text(text, "atc_command.txt")
        tracker.set_tags({"compile_skipped": "dry run (atc.dry_run=true)"})
        return None

    cached = _load_cached(plan, atc_cfg, warn=True)
    if cached is not None:
        log.info("compile cache hit: %s", cached.om_path)
        tracker.log_text(f"{plan.command_line}\n\n(cache hit: {cached.om_path})\n", "atc_command.txt")
        if (plan.folder / "atc.log").is_file():  # the log of the compile that made this .om
            tracker.log_artifact(plan.folder / "atc.log")
        _record(tracker, cached, atc_cfg)
        return cached

    environment = load_environment(atc_cfg)
    if environment.atc is None:
        message = cann.missing_toolkit_message("atc (task=compile)", atc_cfg.toolkit_home)
        if required:
            raise ToolchainError(message)
        log.warning("skipping the ATC compile: %s", message)
        tracker.set_tags({"compile_skipped": message})
        return None
    return _compile(plan, atc_cfg, ctx, environment)


def _compile(plan: CompilePlan, atc_cfg: AtcConfig, ctx: "JobContext", environment: AtcEnvironment) -> CompiledModel:
    tracker = ctx.tracker
    # Build in a private folder and rename it into place: a killed or concurrent compile never
    # leaves a half-written cache entry behind.
    staging = plan.folder.with_name(f".{plan.folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    argv = [str(environment.atc), *build_atc_command(atc_cfg, plan.onnx_path, plan.shapes, staging / plan.stem)[1:]]
    tracker.log_text(f"{shlex.join(argv)}\n\n{environment.describe(sourced=True)}\n", "atc_command.txt")
    log_path = ctx.output_dir / "atc.log"
    print(f"ATC: {shlex.join(argv)}", flush=True)
    try:
        result = run_atc(argv, environment.env, atc_cfg.timeout_s, log_path)
        tracker.log_artifact(log_path)
        om = check_result(result, staging / plan.stem, atc_cfg.timeout_s)
        shutil.copy2(log_path, staging / "atc.log")
        om_sha = sha256_files([om])
        manifest = {
            "om": om.name, "om_sha256": om_sha, "om_bytes": om.stat().st_size, "onnx_sha256": plan.onnx_sha256,
            "onnx_path": str(plan.onnx_path), "argv": plan.argv, "compile_seconds": result.seconds,
            "soc_version": atc_cfg.soc_version, "dynamic_mode": plan.shapes.mode,
            "input_shape": plan.shapes.input_shape, "batch_gears": plan.shapes.batch_gears,
            "dims_gears": plan.shapes.dims_gears, "cache_key": plan.key, "atc": str(environment.atc),
            "set_env": str(environment.set_env) if environment.set_env else None,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if plan.folder.exists() and _load_cached(plan, atc_cfg) is None:  # damaged by hand; replace it
            shutil.rmtree(plan.folder)
        try:
            staging.rename(plan.folder)
        except OSError:  # an identical compile finished first; its result is as good as ours
            if _load_cached(plan, atc_cfg) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    compiled = _load_cached(plan, atc_cfg)
    assert compiled is not None, plan.folder
    compiled.cache_hit = False
    compiled.compile_seconds = result.seconds
    _record(tracker, compiled, atc_cfg)
    return compiled


def _load_cached(plan: CompilePlan, atc_cfg: AtcConfig, warn: bool = False) -> CompiledModel | None:
    manifest_path = plan.folder / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        om = plan.folder / manifest["om"]
        if not om.is_file():
            return None
        problem = (f"{om} has {om.stat().st_size} bytes, not the recorded {manifest['om_bytes']}"
                   if om.stat().st_size != manifest["om_bytes"]
                   else digest_mismatch([om], manifest_path, manifest["om_sha256"]))
        if problem is not None:  # damaged by hand: compiled again (the caller replaces the entry)
            if warn:
                log.warning("compile cache entry %s is damaged (%s); compiling it again", plan.folder, problem)
            return None
    except (OSError, ValueError, KeyError):
        return None
    return CompiledModel(om_path=om, sha256=manifest["om_sha256"], onnx_sha256=manifest["onnx_sha256"],
                         soc_version=manifest["soc_version"], dynamic_mode=manifest["dynamic_mode"],
                         batch_gears=manifest["batch_gears"], dims_gears=manifest["dims_gears"],
                         input_shape=manifest["input_shape"], cache_hit=True,
                         compile_seconds=manifest["compile_seconds"], argv=manifest["argv"])


def _record(tracker, compiled: CompiledModel, atc_cfg: AtcConfig) -> None:
    # On a cache hit compile_seconds is the original compile's time; compile_cache_hit tells them apart.
    tracker.log_metrics({"compile_seconds": compiled.compile_seconds, "compile_cache_hit": float(compiled.cache_hit),
                         "om_size_mb": compiled.om_path.stat().st_size / 2**20})
    tracker.set_tags({"om_sha256": compiled.sha256, "onnx_sha256": compiled.onnx_sha256,
                      "om_path": str(compiled.om_path), "atc.input_shape": compiled.input_shape})
    tracker.log_dict({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(compiled).items()}, "compile.json")
    if atc_cfg.log_om:
        tracker.log_artifact(compiled.om_path, "om")
