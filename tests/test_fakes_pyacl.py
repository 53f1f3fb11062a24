"""The pyACL simulator itself (tests/fakes/pyacl, importable as ``acl``): output names of ONNX-built
models, memcpy traffic counters, precision as compiled, the pre-6.0.1 acl.util surface.

Models are compiled with the stand-in atc (tests/fakes/bin/atc) and driven through the documented pyACL
calls, as real code (Tlntin/qwen-ascend-llm utils/engine.py, Ascend/samples acllite) makes them. These
tests do not import ascend_lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FAKES = Path(__file__).resolve().parent / "fakes"
ATC = FAKES / "bin" / "atc"
sys.path.insert(0, str(FAKES))
from om_format import write_om  # noqa: E402

H2H, H2D, D2H, D2D = 0, 1, 2, 3
NPY_INT32, NPY_INT64, NPY_FLOAT32, NPY_HALF = 5, 7, 11, 23


def _forget_acl() -> None:
    for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
        del sys.modules[name]


@pytest.fixture
def sim(monkeypatch):
    """The simulator imported as ``acl`` for this test only, with fresh state."""
    monkeypatch.syspath_prepend(str(FAKES / "pyacl"))
    monkeypatch.delenv("ASCEND_LAB_SIM_CANN_VERSION", raising=False)
    _forget_acl()
    import acl

    acl._sim.reset()
    yield acl
    _forget_acl()


def compile_om(tmp_path: Path, model: Path, shape: str, *flags: str, soc: str = "Ascend910B3") -> Path:
    out = tmp_path / model.stem
    result = subprocess.run([sys.executable, str(ATC), "--framework=5", f"--model={model}", f"--output={out}",
                             f"--soc_version={soc}", "--input_format=ND", f"--input_shape={shape}", *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    return Path(f"{out}_linux_x86_64.om")


def save(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def tensor(name, dtype, shape):
    from onnx import helper

    return helper.make_tensor_value_info(name, dtype, shape)


def const(name, array):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array), name)


class Session:
    """The documented pyACL sequence: init, device, context, load, desc, one device buffer per I/O."""

    def __init__(self, acl, om: Path, input_extra: int = 0) -> None:
        """``input_extra``: bytes more (or fewer) than get_input_size_by_index for each graph input's buffer."""
        self.acl = acl
        assert acl.init() == 0 and acl.rt.set_device(0) == 0
        self.context, ret = acl.rt.create_context(0)
        assert ret == 0
        self.model_id, ret = acl.mdl.load_from_file(str(om))
        assert ret == 0, ret
        self.desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(self.desc, self.model_id) == 0
        self.buffers = {"in": [], "out": []}
        self.datasets = {}
        for kind, count, size_of in (("in", acl.mdl.get_num_inputs(self.desc), acl.mdl.get_input_size_by_index),
                                     ("out", acl.mdl.get_num_outputs(self.desc), acl.mdl.get_output_size_by_index)):
            dataset = acl.mdl.create_dataset()
            for i in range(count):
                size = size_of(self.desc, i)
                mbatch = kind == "in" and acl.mdl.get_input_name_by_index(self.desc, i) == "ascend_mbatch_shape_data"
                size += input_extra if kind == "in" and not mbatch else 0
                ptr, ret = acl.rt.malloc(size, 0)
                assert ret == 0
                buffer = acl.create_data_buffer(ptr, size)
                assert acl.mdl.add_dataset_buffer(dataset, buffer)[1] == 0
                self.buffers[kind].append((ptr, size, buffer))
            self.datasets[kind] = dataset

    def run(self, *inputs: np.ndarray, old_util: bool = False, dims: list[int] | None = None) -> list[np.ndarray]:
        """``dims``: a dynamic-dims model's full input dims for this run (set_input_dynamic_dims)."""
        acl = self.acl
        if dims is not None:
            index, ret = acl.mdl.get_input_index_by_name(self.desc, "ascend_mbatch_shape_data")
            assert ret == 0
            assert acl.mdl.set_input_dynamic_dims(self.model_id, self.datasets["in"], index,
                                                  {"dimCount": len(dims), "name": "", "dims": dims}) == 0
        for (ptr, size, _), array in zip(self.buffers["in"], inputs):
            array = np.ascontiguousarray(array)
            if old_util:
                host = acl.util.numpy_to_ptr(array)
            else:
                data = array.tobytes()
                host = acl.util.bytes_to_ptr(data)
            assert acl.rt.memcpy(ptr, size, host, array.nbytes, H2D) == 0
        ret = acl.mdl.execute(self.model_id, self.datasets["in"], self.datasets["out"])
        if ret != 0:
            raise RuntimeError(f"acl.mdl.execute returned {ret}")
        results = []
        for i, (ptr, size, _) in enumerate(self.buffers["out"]):
            dims, ret = acl.mdl.get_cur_output_dims(self.desc, i)
            assert ret == 0
            dtype = {0: np.float32, 1: np.float16, 3: np.int32, 9: np.int64}[acl.mdl.get_output_data_type(self.desc, i)]
            if old_util:
                out = np.empty(dims["dims"], dtype)
                assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), out.nbytes, ptr, out.nbytes, D2H) == 0
            else:
                host, ret = acl.rt.malloc_host(size)
                assert acl.rt.memcpy(host, size, ptr, size, D2H) == 0
                count = int(np.prod(dims["dims"])) * np.dtype(dtype).itemsize
                out = np.frombuffer(acl.util.ptr_to_bytes(host, count), dtype).reshape(dims["dims"])
                assert acl.rt.free_host(host) == 0
            results.append(out)
        return results

    def close(self) -> None:
        acl = self.acl
        for kind in ("in", "out"):
            for ptr, _, buffer in self.buffers[kind]:
                assert acl.destroy_data_buffer(buffer) == 0 and acl.rt.free(ptr) == 0
            assert acl.mdl.destroy_dataset(self.datasets[kind]) == 0
        assert acl.mdl.destroy_desc(self.desc) == 0 and acl.mdl.unload(self.model_id) == 0
        assert acl.rt.destroy_context(self.context) == 0 and acl.rt.reset_device(0) == 0 and acl.finalize() == 0
        assert acl._sim.leaks() == []


# ---------------------------------------------------------------------------------------------
# Dynamic dims: the mbatch input and buffer sizes


@pytest.mark.parametrize("extra,ok", [(0, True), (64, True), (-4, False)])
def test_dims_gears_size_the_mbatch_input_by_the_minus_ones_and_buffers_may_be_larger(sim, tmp_path, extra, ok):
    """GE sizes ascend_mbatch_shape_data by the -1 values (2 here, not the 4 dims of both inputs) and writes
    only those; set_input_dynamic_dims still takes every input's full dims. A buffer larger than
    get_input_size_by_index (the largest gear's size) is accepted, a smaller one refused (shared Ascend notes §8:
    GE's SetDynamicDims and input copy)."""
    from onnx import TensorProto as T
    from onnx import helper

    model = save(tmp_path / "add.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                 [tensor("a", T.FLOAT, [1, "s"]), tensor("b", T.FLOAT, [1, "s"])], [tensor("y", T.FLOAT, [1, "s"])])
    om = compile_om(tmp_path, model, "a:1,-1;b:1,-1", "--dynamic_dims=2,2;4,4")
    session = Session(sim, om, input_extra=extra)
    index, _ = sim.mdl.get_input_index_by_name(session.desc, "ascend_mbatch_shape_data")
    assert sim.mdl.get_input_size_by_index(session.desc, index) == 2 * 8
    a, b = np.ones((1, 2), np.float32), np.full((1, 2), 2, np.float32)
    if ok:
        [y] = session.run(a, b, dims=[1, 2, 1, 2])
        np.testing.assert_array_equal(y, a + b)
    else:
        with pytest.raises(RuntimeError, match="100017"):
            session.run(a, b, dims=[1, 2, 1, 2])
    session.close()


# ---------------------------------------------------------------------------------------------
# Output names


def split_graph(path: Path) -> Path:
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Add", ["x", "x"], ["doubled"], name="/model/Add"),
             helper.make_node("Split", ["doubled", "sizes"], ["first", "second"], axis=1)]
    return save(path, nodes, [tensor("x", T.FLOAT, [1, 4])],
                [tensor("second", T.FLOAT, [1, 2]), tensor("doubled", T.FLOAT, [1, 4])],
                [const("sizes", np.array([2, 2], np.int64))])


def test_onnx_model_outputs_are_named_op_edge_name_and_inputs_keep_their_names(sim, tmp_path):
    om = compile_om(tmp_path, split_graph(tmp_path / "split.onnx"), "x:1,4")
    session = Session(sim, om)
    acl, desc = sim, session.desc
    assert acl.mdl.get_input_name_by_index(desc, 0) == "x"
    assert acl.mdl.get_input_dims(desc, 0)[0]["name"] == "x"
    assert acl.mdl.get_input_index_by_name(desc, "x") == (0, 0)
    names = [acl.mdl.get_output_name_by_index(desc, i) for i in range(2)]
    assert names == ["Split_0:1:second", "/model/Add:0:doubled"]
    assert [acl.mdl.get_output_dims(desc, i)[0]["name"] for i in range(2)] == names
    second, doubled = session.run(np.arange(4, dtype=np.float32).reshape(1, 4))
    assert [acl.mdl.get_cur_output_dims(desc, i)[0]["name"] for i in range(2)] == names
    # How open-mmlab/mmdeploy's Ascend wrapper reads them back.
    assert [n.split(":")[-1] for n in names] == ["second", "doubled"]
    np.testing.assert_array_equal(second, [[4.0, 6.0]])
    np.testing.assert_array_equal(doubled, [[0.0, 2.0, 4.0, 6.0]])
    session.close()


def test_a_hand_written_header_without_framework_keeps_raw_output_names(sim, tmp_path):
    model = split_graph(tmp_path / "split.onnx")
    om = tmp_path / "hand.om"
    write_om(om, {"soc_version": "Ascend910B3", "inputs": [{"name": "x", "dims": [1, 4], "dtype": "float32"}],
                  "outputs": [{"name": "second", "dims": [1, 2], "dtype": "float32"},
                              {"name": "doubled", "dims": [1, 4], "dtype": "float32"}],
                  "dynamic": None, "input_format": "ND", "precision_mode": None}, model.read_bytes())
    session = Session(sim, om)
    assert [sim.mdl.get_output_name_by_index(session.desc, i) for i in range(2)] == ["second", "doubled"]
    session.close()


# ---------------------------------------------------------------------------------------------
# Traffic


def test_memcpy_traffic_is_counted_by_kind_including_offsets_inside_an_allocation(sim):
    acl, _sim = sim, sim._sim
    assert acl.init() == 0 and acl.rt.set_device(0) == 0
    context, _ = acl.rt.create_context(0)
    _sim.reset_traffic()
    slot, slots = 16, 8
    cache, _ = acl.rt.malloc(slot * slots, 0)                      # a device-resident "KV cache"
    new, _ = acl.rt.malloc(slot, 0)
    host, _ = acl.rt.malloc_host(slot * slots)
    token = bytes(range(slot))
    assert acl.rt.memcpy(new, slot, acl.util.bytes_to_ptr(token), slot, H2D) == 0
    # Write the new token into slot 5, device to device, at base + offset (dest_max: what is left from there).
    assert acl.rt.memcpy(cache + 5 * slot, slot * (slots - 5), new, slot, D2D) == 0
    # Overlapping shift inside the same allocation (slots 5..6 → 4..5).
    assert acl.rt.memcpy(cache + 4 * slot, 2 * slot, cache + 5 * slot, 2 * slot, D2D) == 0
    assert acl.rt.memcpy(host, slot * slots, cache, slot * slots, D2H) == 0
    assert acl.rt.memcpy(host + slot, slot, host, slot, H2H) == 0
    data = acl.util.ptr_to_bytes(host, slot * slots)
    assert data[4 * slot:5 * slot] == token and data[5 * slot:6 * slot] == bytes(slot)
    traffic = _sim.traffic()
    assert {k: traffic[k] for k in ("h2d_bytes", "h2d_calls", "d2d_bytes", "d2d_calls", "d2h_bytes", "d2h_calls",
                                    "h2h_bytes", "h2h_calls")} == {
        "h2d_bytes": slot, "h2d_calls": 1, "d2d_bytes": 3 * slot, "d2d_calls": 2,
        "d2h_bytes": slot * slots, "d2h_calls": 1, "h2h_bytes": slot, "h2h_calls": 1}
    assert traffic["calls_by_name"]["rt.memcpy"] == 5 and traffic["calls_by_name"]["util.bytes_to_ptr"] == 1
    assert traffic["api_calls"] == sum(traffic["calls_by_name"].values())
    # Bounds: dest_max past the end of the allocation from that offset, a source read past its end.
    assert acl.rt.memcpy(cache + 7 * slot, 2 * slot, new, slot, D2D) != 0
    assert acl.rt.memcpy(cache, slot * slots, new, 2 * slot, D2D) != 0
    assert acl.rt.memcpy(cache + slot * slots, slot, new, slot, D2D) != 0  # one past the end: no allocation
    assert _sim.traffic()["d2d_calls"] == 2  # failed copies move nothing
    assert _sim.traffic()["calls_by_name"]["rt.memcpy"] == 8  # but they are calls
    _sim.reset_traffic()
    assert _sim.traffic() == {"h2h_bytes": 0, "h2h_calls": 0, "h2d_bytes": 0, "h2d_calls": 0, "d2h_bytes": 0,
                              "d2h_calls": 0, "d2d_bytes": 0, "d2d_calls": 0, "api_calls": 0, "calls_by_name": {}}
    assert "rt.memcpy" in _sim.state.calls  # the call log is kept
    for ptr in (cache, new):
        assert acl.rt.free(ptr) == 0
    assert acl.rt.free_host(host) == 0 and acl.rt.destroy_context(context) == 0
    assert acl.rt.reset_device(0) == 0 and acl.finalize() == 0
    assert _sim.leaks() == []


TRAFFIC_SCRIPT = """
import acl
acl.init(); acl.rt.set_device(0); ctx, _ = acl.rt.create_context(0)
dev, _ = acl.rt.malloc(64, 0)
acl.rt.memcpy(dev, 64, acl.util.bytes_to_ptr(bytes(64)), 64, 1)
acl.rt.free(dev); acl.rt.destroy_context(ctx); acl.rt.reset_device(0); acl.finalize()
"""


def test_the_leaks_file_carries_the_traffic_counters(tmp_path):
    leaks = tmp_path / "leaks.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES / "pyacl"), os.environ.get("PYTHONPATH", "")]),
           "ASCEND_LAB_SIM_LEAKS_FILE": str(leaks)}
    done = subprocess.run([sys.executable, "-c", TRAFFIC_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(leaks.read_text())
    assert report["leaks"] == [] and report["executions"] == 0
    assert report["traffic"]["h2d_bytes"] == 64 and report["traffic"]["h2d_calls"] == 1
    assert report["traffic"]["d2h_bytes"] == 0 and report["traffic"]["api_calls"] >= 9


# ---------------------------------------------------------------------------------------------
# Precision


def masked_softmax_graph(path: Path) -> Path:
    """probs = softmax(scores + where(mask, 0, finfo(float32).min)): the Hugging Face mask pattern."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Cast", ["attention_mask"], ["keep"], to=T.BOOL),
             helper.make_node("Where", ["keep", "zero", "min"], ["bias"]),
             helper.make_node("Add", ["scores", "bias"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["probs"], axis=-1)]
    return save(path, nodes, [tensor("scores", T.FLOAT, [2, 4]), tensor("attention_mask", T.INT64, [2, 4])],
                [tensor("probs", T.FLOAT, [2, 4])],
                [const("zero", np.array(0, np.float32)), const("min", np.array(np.finfo(np.float32).min, np.float32))])


SCORES = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, -0.5, 0.25, 1.0]], np.float32)
MASK = np.array([[0, 0, 0, 0], [0, 1, 1, 1]], np.int64)  # row 0 fully masked (left padding of an empty row)


def reference() -> np.ndarray:
    bias = np.where(MASK.astype(bool), 0.0, np.finfo(np.float32).min).astype(np.float32)
    masked = SCORES + bias
    e = np.exp(masked - masked.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("flags, chip, outcome", [
    ((), "Ascend910B3", "nan"),                                   # no flag: ATC's default force_fp16
    (("--precision_mode=force_fp16",), "Ascend910B3", "nan"),
    (("--precision_mode_v2=fp16",), "Ascend910B3", "nan"),
    (("--precision_mode=must_keep_origin_dtype",), "Ascend910B3", "exact"),
    (("--precision_mode_v2=origin",), "Ascend910B3", "exact"),
    (("--precision_mode=force_fp16",), "Ascend310P3", "saturated"),  # Atlas inference: saturation mode only
])
def test_a_float32_min_mask_under_force_fp16_turns_a_fully_masked_row_into_nan(sim, tmp_path, flags, chip, outcome):
    sim._sim.configure(chip=chip)
    om = compile_om(tmp_path, masked_softmax_graph(tmp_path / "mask.onnx"), "scores:2,4;attention_mask:2,4", *flags,
                    soc=chip)
    session = Session(sim, om)
    (probs,) = session.run(SCORES, MASK)
    session.close()
    assert probs.dtype == np.float32  # ATC keeps the model's I/O dtypes
    if outcome == "exact":
        np.testing.assert_allclose(probs, reference(), rtol=1e-6)
        return
    # float16 rounding of the unmasked row: close to float32, not equal.
    np.testing.assert_allclose(probs[1], reference()[1], rtol=2e-3)
    assert not np.array_equal(probs[1], reference()[1])
    if outcome == "nan":
        assert np.isnan(probs[0]).all()  # min → -inf, softmax over -inf everywhere
    else:
        np.testing.assert_allclose(probs[0], 0.25)  # min → -65504 (saturated), a uniform row


def test_a_float16_graph_under_must_keep_origin_dtype_runs_in_float16(sim, tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    model = save(tmp_path / "half.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [tensor("x", T.FLOAT16, [1, 4])], [tensor("y", T.FLOAT16, [1, 4])],
                 [const("w", np.full((4, 4), 0.5, np.float16))])
    om = compile_om(tmp_path, model, "x:1,4", "--precision_mode=must_keep_origin_dtype")
    session = Session(sim, om)
    (y,) = session.run(np.ones((1, 4), np.float16))
    session.close()
    assert y.dtype == np.float16 and np.array_equal(y, np.full((1, 4), 2.0, np.float16))


# ---------------------------------------------------------------------------------------------
# acl.util by CANN release


def test_before_cann_6_0_1_util_has_only_numpy_to_ptr_and_ptr_to_numpy(sim, tmp_path):
    acl = sim
    assert {"bytes_to_ptr", "ptr_to_bytes", "numpy_to_ptr", "ptr_to_numpy"} <= set(dir(acl.util))
    acl._sim.configure(cann_version="5.0.4")
    public = {n for n in dir(acl.util) if not n.startswith("_")}
    assert public == {"numpy_to_ptr", "ptr_to_numpy"}
    assert not hasattr(acl.util, "bytes_to_ptr") and "bytes_to_ptr" not in dir(acl.util)  # acllite's test

    assert acl.init() == 0 and acl.rt.set_device(0) == 0
    context, _ = acl.rt.create_context(0)
    source = np.arange(6, dtype=np.int32).reshape(2, 3)
    dev, _ = acl.rt.malloc(source.nbytes, 0)
    assert acl.rt.memcpy(dev, source.nbytes, acl.util.numpy_to_ptr(source), source.nbytes, H2D) == 0
    # numpy_to_ptr points at the array's own memory: a D2H copy into it fills the array (acllite's pattern).
    target = np.zeros((2, 3), np.int32)
    assert acl.rt.memcpy(acl.util.numpy_to_ptr(target), target.nbytes, dev, target.nbytes, D2H) == 0
    np.testing.assert_array_equal(target, source)
    # ptr_to_numpy reads host memory; its type is a NumPy C type number (NPY_INT32 = 5).
    host, _ = acl.rt.malloc_host(source.nbytes)
    assert acl.rt.memcpy(host, source.nbytes, dev, source.nbytes, D2H) == 0
    np.testing.assert_array_equal(acl.util.ptr_to_numpy(host, (2, 3), NPY_INT32), source)
    # An aclDataType by mistake (ACL_INT32 = 3 is NPY_INT16) reads other values.
    assert not np.array_equal(acl.util.ptr_to_numpy(host, (2, 3), 3), source)
    with pytest.raises(RuntimeError, match="device memory"):
        acl.util.ptr_to_numpy(dev, (2, 3), NPY_INT32)
    # A read-only array cannot be a copy destination.
    frozen = np.zeros(6, np.int32)
    frozen.flags.writeable = False
    assert acl.rt.memcpy(acl.util.numpy_to_ptr(frozen), frozen.nbytes, dev, frozen.nbytes, D2H) != 0
    assert acl.rt.free(dev) == 0 and acl.rt.free_host(host) == 0
    assert acl.rt.destroy_context(context) == 0 and acl.rt.reset_device(0) == 0 and acl.finalize() == 0
    # reset() returns to the release the environment names (the default: a current one).
    acl._sim.reset()
    assert hasattr(acl.util, "bytes_to_ptr")


def test_a_model_runs_end_to_end_with_the_old_util_surface(sim, tmp_path):
    sim._sim.configure(cann_version="5.0.4")
    om = compile_om(tmp_path, split_graph(tmp_path / "split.onnx"), "x:1,4")
    session = Session(sim, om)
    second, doubled = session.run(np.arange(4, dtype=np.float32).reshape(1, 4), old_util=True)
    session.close()
    np.testing.assert_array_equal(second, [[4.0, 6.0]])
    np.testing.assert_array_equal(doubled, [[0.0, 2.0, 4.0, 6.0]])


def test_the_cann_version_is_read_from_the_environment(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES / "pyacl"), os.environ.get("PYTHONPATH", "")])}
    script = "import acl; print(sorted(n for n in dir(acl.util) if not n.startswith('_')))"
    for version, expected in (("5.0.4", ["numpy_to_ptr", "ptr_to_numpy"]),
                              ("6.0.1", ["bytes_to_ptr", "numpy_contiguous_to_ptr", "numpy_to_ptr", "ptr_to_bytes",
                                         "ptr_to_numpy"])):
        done = subprocess.run([sys.executable, "-c", script], env={**env, "ASCEND_LAB_SIM_CANN_VERSION": version},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == repr(expected)
