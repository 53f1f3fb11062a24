"""AclRuntime against the pyACL simulator (tests/fakes/pyacl), compared with onnxruntime on the same ONNX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ascend_lab.errors import AscendLabError, ToolchainError
from ascend_lab.runtimes.acl.runtime import AclError, AclInputError, AclRuntime
from fakes.om_format import write_om  # tests/ is on sys.path (rootdir conftest)

FAKES = Path(__file__).resolve().parent / "fakes"

VOCAB, HIDDEN, SEQ = 50, 16, 8


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """A tiny attention block: input_ids, attention_mask (int64 [batch, seq]) → hidden_states, pooled (float32)."""
    import torch

    class TinyAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
            self.query = torch.nn.Linear(HIDDEN, HIDDEN)
            self.out = torch.nn.Linear(HIDDEN, HIDDEN)

        def forward(self, input_ids, attention_mask):
            x = self.embed(input_ids)
            mask = attention_mask.to(x.dtype)
            scores = self.query(x) @ x.transpose(1, 2) / HIDDEN ** 0.5 + (1.0 - mask[:, None, :]) * -1e4
            hidden = self.out(torch.softmax(scores, -1) @ x)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
            return hidden, pooled

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    example = (torch.randint(0, VOCAB, (2, SEQ)), torch.ones(2, SEQ, dtype=torch.int64))
    torch.onnx.export(TinyAttention().eval(), example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["hidden_states", "pooled"], dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return path


def om_header(input_dims, output_dims, dynamic=None, soc="Ascend910B3") -> dict:
    return {
        "soc_version": soc,
        "inputs": [{"name": n, "dims": input_dims, "dtype": "int64"} for n in ("input_ids", "attention_mask")],
        "outputs": [{"name": "hidden_states", "dims": output_dims[0], "dtype": "float32"},
                    {"name": "pooled", "dims": output_dims[1], "dtype": "float32"}],
        "dynamic": dynamic, "input_format": "ND", "precision_mode": None,
    }


@pytest.fixture
def make_om(tmp_path, onnx_model):
    def _make(kind: str = "static", soc: str = "Ascend910B3", name: str | None = None) -> Path:
        headers = {
            "static": om_header([2, SEQ], [[2, SEQ, HIDDEN], [2, HIDDEN]], soc=soc),
            "batch": om_header([-1, SEQ], [[-1, SEQ, HIDDEN], [-1, HIDDEN]],
                               {"kind": "batch", "gears": [1, 4, 8]}, soc),
            "dims": om_header([2, -1], [[2, -1, HIDDEN], [2, HIDDEN]],
                              {"kind": "dims", "gears": [[4, 4], [8, 8]]}, soc),
        }
        path = tmp_path / (name or f"{kind}.om")
        write_om(path, headers[kind], onnx_model.read_bytes())
        return path

    return _make



def feeds(batch: int, seq: int = SEQ, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq // 2:] = 0  # left-aligned padding in the first row exercises the mask
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq), dtype=np.int64), "attention_mask": mask}


def reference(onnx_model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    return dict(zip(["hidden_states", "pooled"], session.run(["hidden_states", "pooled"], inputs)))


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_static_model_matches_onnxruntime(sim, make_om, onnx_model):
    with AclRuntime(make_om("static")) as rt:
        assert rt.dynamic_mode == "static" and rt.gears is None
        assert [(s.name, s.shape, s.dtype) for s in rt.inputs] == [
            ("input_ids", (2, SEQ), np.dtype("int64")), ("attention_mask", (2, SEQ), np.dtype("int64"))]
        assert [(s.name, s.shape) for s in rt.outputs] == [("hidden_states", (2, SEQ, HIDDEN)), ("pooled", (2, HIDDEN))]
        for seed in (0, 1):
            inputs = feeds(2, seed=seed)
            assert_same(rt.run(inputs), reference(onnx_model, inputs))
        assert {k: len(v) for k, v in rt.timings.items()} == {"h2d_ms": 2, "npu_compute_ms": 2, "d2h_ms": 2}
        assert all(v > 0 for v in rt.timings["npu_compute_ms"])
        assert all(v >= 0 for v in rt.timings["h2d_ms"] + rt.timings["d2h_ms"])
    assert sim._sim.state.executions == 2
    assert sim._sim.leaks() == []


@pytest.mark.parametrize("batch, gear", [(1, 1), (4, 4), (8, 8), (3, 4), (5, 8)])
def test_dynamic_batch_matches_onnxruntime(sim, make_om, onnx_model, monkeypatch, batch, gear):
    chosen = []
    original = sim.mdl.set_dynamic_batch_size
    monkeypatch.setattr(sim.mdl, "set_dynamic_batch_size", lambda *a: chosen.append(a[3]) or original(*a))
    with AclRuntime(make_om("batch")) as rt:
        assert rt.dynamic_mode == "dynamic_batch_size" and rt.gears == [1, 4, 8]
        assert rt.inputs[0].shape == (-1, SEQ)
        inputs = feeds(batch)
        # A non-gear batch runs padded to the next gear; outputs come back at the requested batch.
        assert_same(rt.run(inputs), reference(onnx_model, inputs))
    assert chosen == [gear]
    assert sim._sim.leaks() == []


def test_dynamic_batch_above_largest_gear_is_rejected(sim, make_om):
    with AclRuntime(make_om("batch")) as rt:
        with pytest.raises(AclInputError, match=r"batch 9 .*gears: 1, 4, 8"):
            rt.run(feeds(9))
        with pytest.raises(AclInputError, match=r"disagree on the batch size"):
            rt.run({"input_ids": feeds(2)["input_ids"], "attention_mask": feeds(3)["attention_mask"]})
    assert sim._sim.state.executions == 0 and "rt.memcpy" not in sim._sim.state.calls
    assert sim._sim.leaks() == []


def test_dynamic_dims_matches_onnxruntime(sim, make_om, onnx_model, monkeypatch):
    passed = []
    original = sim.mdl.set_input_dynamic_dims
    monkeypatch.setattr(sim.mdl, "set_input_dynamic_dims", lambda *a: passed.append(a[3]) or original(*a))
    with AclRuntime(make_om("dims")) as rt:
        assert rt.dynamic_mode == "dynamic_dims"
        assert rt.gears == [{"input_ids": (2, 4), "attention_mask": (2, 4)},
                            {"input_ids": (2, 8), "attention_mask": (2, 8)}]
        for seq in (4, 8, 4):
            inputs = feeds(2, seq=seq, seed=seq)
            out = rt.run(inputs)
            assert out["hidden_states"].shape == (2, seq, HIDDEN)  # from get_cur_output_dims, not the max profile
            assert_same(out, reference(onnx_model, inputs))
        with pytest.raises(AclInputError, match=r"not a compiled gear.*input_ids\[2, 4\]"):
            rt.run(feeds(2, seq=5))
    # The full concatenated shape of all inputs, as documented.
    assert passed[0] == {"dimCount": 4, "name": "", "dims": [2, 4, 2, 4]}
    assert sim._sim.state.executions == 3
    assert sim._sim.leaks() == []


@pytest.mark.parametrize("bad, message", [
    ({"input_ids": np.zeros((2, SEQ), np.int32)}, r"input 'input_ids'.*expected dtype int64, got int32"),
    ({"attention_mask": np.ones((2, SEQ + 1), np.int64)},
     r"input 'attention_mask'.*expected shape \(2, 8\), got \(2, 9\)"),
    ({"input_ids": np.zeros((SEQ,), np.int64)}, r"input 'input_ids'.*expected shape \(2, 8\), got \(8,\)"),
    ({"extra": np.zeros(1)}, r"unexpected \['extra'\]"),
])
def test_wrong_inputs_are_rejected_before_anything_runs(sim, make_om, bad, message):
    with AclRuntime(make_om("static")) as rt:
        with pytest.raises(AclInputError, match=message):
            rt.run({**feeds(2), **bad})
        with pytest.raises(AclInputError, match=r"missing \['attention_mask'\]"):
            rt.run({"input_ids": feeds(2)["input_ids"]})
    assert sim._sim.state.executions == 0 and "rt.memcpy" not in sim._sim.state.calls
    assert sim._sim.leaks() == []


def test_execute_failure_names_call_and_code_and_leaks_nothing(sim, make_om, onnx_model):
    rt = AclRuntime(make_om("static"))
    sim._sim.fail_next("mdl.execute", 507011)
    with pytest.raises(AclError, match=r"acl\.mdl\.execute failed: ret=507011") as caught:
        rt.run(feeds(2))
    assert caught.value.call == "acl.mdl.execute" and caught.value.ret == 507011
    assert_same(rt.run(feeds(2)), reference(onnx_model, feeds(2)))  # the runtime stays usable
    rt.close()
    rt.close()  # idempotent
    assert sim._sim.leaks() == []
    with pytest.raises(AscendLabError, match="already closed"):
        rt.run(feeds(2))


@pytest.mark.parametrize("call, code", [
    ("rt.set_device", 507033), ("rt.create_context", 107002), ("mdl.create_desc", 0), ("mdl.get_desc", 100011),
    ("mdl.get_input_dims", 100000), ("mdl.create_dataset", 0), ("rt.malloc", 207001),
    ("create_data_buffer", 0), ("mdl.add_dataset_buffer", 100000), ("rt.malloc_host", 207001),
])
def test_construction_failure_releases_everything(sim, make_om, call, code):
    sim._sim.fail_next(call, code)
    with pytest.raises(AclError) as caught:
        AclRuntime(make_om("batch"))
    assert caught.value.call == f"acl.{call}"
    assert sim._sim.leaks() == []


def test_soc_mismatch_fails_at_load_with_a_helpful_message(sim, make_om, tmp_path, monkeypatch):
    om = make_om("static", soc="Ascend310P3")
    with pytest.raises(AclError, match=r"acl\.mdl\.load_from_file failed: ret=\d+") as caught:
        AclRuntime(om)
    message = str(caught.value)
    assert str(om) in message and "atc.soc_version" in message and "npu-smi info" in message
    assert sim._sim.leaks() == []
    # Where npu-smi exists, the message names this host's chip.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npu-smi").write_text("#!/bin/sh\necho '| 0     910B3     | OK            | 93.1   40 |'\n")
    (bin_dir / "npu-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(AclError, match="this host's chip is Ascend910B3"):
        AclRuntime(om)
    assert sim._sim.leaks() == []


@pytest.mark.parametrize("damage", ["magic", "truncated_graph", "truncated_header"])
def test_corrupt_om_fails_at_load_naming_the_file(sim, make_om, damage):
    om = make_om("static")
    data = om.read_bytes()
    header_end = data.index(b"\n", len(b"ASCEND_LAB_FAKE_OM v1\n"))
    om.write_bytes({"magic": b"NOT AN OM" + data[9:], "truncated_graph": data[: header_end + 40],
                    "truncated_header": data[: header_end - 10]}[damage])
    with pytest.raises(AclError, match=r"load_from_file failed") as caught:
        AclRuntime(om)
    assert str(om) in str(caught.value) and "corrupt or truncated" in str(caught.value)
    assert sim._sim.leaks() == []


def test_shape_range_model_is_refused_with_a_clear_message(sim, make_om, onnx_model, tmp_path):
    om = tmp_path / "range.om"
    header = om_header([1, -1], [[1, -1, HIDDEN], [1, HIDDEN]])
    header["input_shape_ranges"] = {"input_ids": ["1", "1~64"], "attention_mask": ["1", "1~64"]}
    write_om(om, header, onnx_model.read_bytes())
    with pytest.raises(ToolchainError, match=r"shape_range.*not supported.*dynamic_batch_size or dynamic_dims"):
        AclRuntime(om)
    assert sim._sim.leaks() == []


def test_missing_om_file(sim, tmp_path):
    with pytest.raises(AscendLabError, match=r"nope\.om does not exist.*task=compile"):
        AclRuntime(tmp_path / "nope.om")
    assert sim._sim.state.calls == []


def test_init_is_shared_and_held_for_the_process(sim, make_om, onnx_model):
    """One acl.init for the life of the process whatever opens and closes (runtimes, sweep jobs), one
    acl.finalize at exit: the simulator refuses an init after a finalize, as no CANN we claim documents it."""
    from ascend_lab.runtimes.acl import pyacl

    first = AclRuntime(make_om("static"))
    second = AclRuntime(make_om("batch"))
    # Interleaved runs: each runtime makes its own context current (execute must run in the load context).
    want = reference(onnx_model, feeds(2))
    assert_same(first.run(feeds(2)), want)
    assert_same(second.run(feeds(2)), want)
    assert_same(first.run(feeds(2)), want)
    first.close()
    assert_same(second.run(feeds(2)), want)
    second.close()
    assert pyacl.acl_users() == 0 and sim._sim.leaks() == []
    with AclRuntime(make_om("static")) as third:  # a later job: no second init
        third.run(feeds(2))
    assert sim._sim.state.inits == 1 and sim._sim.state.finalizes == 0 and sim._sim.state.initialized
    assert sim._sim.leaks(at_exit=True) == ["acl.init without acl.finalize"]
    pyacl._finalize_at_exit(sim)  # what the interpreter's exit runs
    assert sim._sim.state.finalizes == 1 and sim._sim.leaks(at_exit=True) == []
    assert sim.init() == 100049  # the stand-in's re-init rule (tests/fakes/pyacl/acl/__init__.py)


def test_pyacl_initialised_elsewhere_is_left_to_its_owner(sim, make_om):
    assert sim.init() == 0  # e.g. torch_npu initialised pyACL in this process
    with AclRuntime(make_om("static")) as rt:
        rt.run(feeds(2))
    assert "finalize" not in sim._sim.state.calls and sim._sim.state.initialized
    assert sim.finalize() == 0
    assert sim._sim.leaks() == []


def test_missing_pyacl_says_how_to_load_cann(monkeypatch, make_om):
    monkeypatch.setitem(sys.modules, "acl", None)  # `import acl` raises ImportError
    with pytest.raises(ToolchainError, match=r"(?s)`import acl` failed.*set_env\.sh"):
        AclRuntime(make_om("static"))


def test_simulator_enforces_the_documented_contract(sim, make_om):
    acl, state = sim, sim._sim.state
    assert acl.rt.set_device(0) == 100001  # before init
    assert acl.init() == 0 and acl.init() == 100002
    assert acl.rt.create_context(0)[1] != 0  # before set_device
    assert acl.rt.set_device(0) == 0
    context, ret = acl.rt.create_context(0)
    assert ret == 0
    ptr, ret = acl.rt.malloc(64, 0)
    assert ret == 0 and acl.rt.malloc(0, 0)[1] != 0
    data = bytes(range(100))
    host = acl.util.bytes_to_ptr(data)
    assert acl.rt.memcpy(ptr, 64, host, 100, 1) != 0  # count > dest_max
    assert acl.rt.memcpy(ptr, 64, host, 64, 2) != 0  # wrong direction
    assert acl.rt.memcpy(ptr, 64, host, 64, 1) == 0
    # A dynamic model refuses to execute until set_dynamic_batch_size configured its dataset.
    model_id, ret = acl.mdl.load_from_file(str(make_om("batch")))
    assert ret == 0
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    assert acl.mdl.get_input_name_by_index(desc, 2) == "ascend_mbatch_shape_data"
    assert acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data") == (2, 0)
    assert acl.mdl.get_input_dims(desc, 0) == ({"name": "input_ids", "dimCount": 2, "dims": [-1, SEQ]}, 0)
    assert acl.mdl.get_input_size_by_index(desc, 0) == 8 * SEQ * 8  # the largest gear
    assert acl.mdl.get_output_dims(desc, 0)[0]["dims"] == [8, SEQ, HIDDEN]
    ins, outs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    allocations = []
    sizes = ((ins, 3, acl.mdl.get_input_size_by_index), (outs, 2, acl.mdl.get_output_size_by_index))
    for dataset, count, size_of in sizes:
        for i in range(count):
            p, _ = acl.rt.malloc(size_of(desc, i), 0)
            buffer = acl.create_data_buffer(p, size_of(desc, i))
            assert acl.mdl.add_dataset_buffer(dataset, buffer) == (dataset, 0)
            allocations.append((p, buffer))
    assert acl.mdl.execute(model_id, ins, outs) != 0
    assert acl.mdl.set_dynamic_batch_size(model_id, ins, 2, 3) != 0  # 3 is not a gear
    assert acl.mdl.set_dynamic_batch_size(model_id, ins, 2, 4) == 0
    assert acl.mdl.execute(model_id, ins, outs) == 0
    assert acl.mdl.get_cur_output_dims(desc, 1)[0]["dims"] == [4, HIDDEN]
    # Execute and unload belong to the load context.
    other, _ = acl.rt.create_context(0)
    assert acl.mdl.execute(model_id, ins, outs) != 0 and acl.mdl.unload(model_id) != 0
    assert acl.rt.destroy_context(other) == 0 and acl.rt.set_context(context) == 0
    assert acl.finalize() == 0
    leaks = sim._sim.leaks()
    assert any("not unloaded" in item for item in leaks) and any("device memory" in item for item in leaks)
    assert any("context" in item for item in leaks) and not any("acl.init" in item for item in leaks)
    assert state.executions == 1


SUBPROCESS_SCRIPT = """
import sys, numpy as np
from ascend_lab.runtimes.acl.runtime import AclRuntime
with AclRuntime(sys.argv[1]) as rt:
    out = rt.run({"input_ids": np.zeros((2, 8), np.int64), "attention_mask": np.ones((2, 8), np.int64)})
    print(out["pooled"].shape)
"""


@pytest.mark.parametrize("fail", [None, "mdl.execute:507011"])
def test_simulator_is_configured_by_environment_in_a_subprocess(make_om, tmp_path, fail):
    """How CLI tests drive the simulator: PYTHONPATH, chip, injected failures and a leak report at exit."""
    leaks_file = tmp_path / "leaks.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES / "pyacl"), os.environ.get("PYTHONPATH", "")]),
           "ASCEND_LAB_SIM_CHIP": "Ascend310P3", "ASCEND_LAB_SIM_LEAKS_FILE": str(leaks_file)}
    if fail:
        env["ASCEND_LAB_SIM_FAIL"] = fail
    done = subprocess.run([sys.executable, "-c", SUBPROCESS_SCRIPT, str(make_om("static", soc="Ascend310P3"))],
                          env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(leaks_file.read_text())
    assert report["leaks"] == []
    if fail:
        assert done.returncode != 0 and "acl.mdl.execute failed: ret=507011" in done.stderr
        assert report["executions"] == 0
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "(2, 16)" and report["executions"] == 1


def test_soc_version_comes_from_pyacl_where_it_is_present(sim, monkeypatch):
    """acl.get_soc_name() (aclpythondevg_01_0008) names the chip, A3 included; npu-smi is the fallback where
    pyACL is missing or returns nothing."""
    from ascend_lab.cann import npu_smi as cann

    monkeypatch.setenv("PATH", f"{Path(__file__).resolve().parent / 'fakes' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NPU_SMI_NAME", "910B3")
    sim._sim.configure(chip="Ascend910_9391")
    assert cann.detected_soc_version() == ("Ascend910_9391", "acl.get_soc_name()")
    assert "init" not in sim._sim.state.calls  # no acl.init needed
    sim._sim.fail_next("get_soc_name", 1)
    assert cann.detected_soc_version() == ("Ascend910B3", "npu-smi info")
    monkeypatch.setitem(sys.modules, "acl", None)  # no pyACL
    assert cann.detected_soc_version() == ("Ascend910B3", "npu-smi info")
