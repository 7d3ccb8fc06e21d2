"""`edgekit profile` reports state what was measured: precision from the graph, the baseline a real FP32,
the shapes and batch timed, the caveats of the JSON in the Markdown, and refusals for what cannot be honoured."""
import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgekit.profiling import run_profile

from profile_models import _save, cli_exit as _exit, fp32_run, matmul_chain

QUICK = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "max_seconds": 5.0}
FAST = ["--warmup", "1", "--min-runs", "3", "--min-seconds", "0"]


def half_mlp(path, k=16):
    """A float16 Linear with float16 input and weights, as onnxconverter-common's float16 conversion makes."""
    w = (np.random.default_rng(0).standard_normal((k, k)) / 4).astype(np.float16)
    return _save([helper.make_node("MatMul", ["x", "w"], ["y"], "mm")], {"w": w},
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", k])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", k])], path)


def dynamic_int8(src, path):
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(path))
    return str(path)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    fp32 = matmul_chain(d / "chain.onnx", 2, k=32)
    return {"half": half_mlp(d / "half.onnx"), "q": dynamic_int8(fp32, d / "q.onnx"), "chain": fp32}


@pytest.mark.parametrize("op_profile", [True, False])
def test_fp16_and_int8_models_are_never_the_fp32_baseline(mixed, op_profile):
    """F9/F16: an FP16 model given first was labelled fp32 (onnxruntime's CPU runs it as Cast + FP32 ops) and
    every ratio was taken against it; with --no-op-profile the precision was unknown and the first model,
    an INT8 one, became the baseline. The precision now comes from the graph, the same either way."""
    rep = run_profile([mixed["half"], mixed["q"], mixed["chain"]], ["x86-laptop"], op_profile=op_profile, **QUICK)
    run = rep["runs"][0]
    assert {k: r["precision"] for k, r in run["results"].items()} == {"half": "fp16", "q": "int8", "chain": "fp32"}
    assert run["baseline"] == "chain" and run["ratios"]["chain"] == 1.0


def test_without_an_fp32_model_no_ratio_is_taken(mixed):
    rep = run_profile([mixed["half"], mixed["q"]], ["x86-laptop"], op_profile=False, **QUICK)
    run = rep["runs"][0]
    assert run["baseline"] is None and run["ratios"] == {"half": None, "q": None}


def test_prepost_is_timed_at_the_batch_of_the_model_timing_beside_it(tmp_path):
    """F8: with --batch 64 pre/model/post/end to end were timed on one sample, so "end to end" (0.077 ms)
    read 10x faster than "model only" (0.714 ms) next to it. Now each iteration pre-processes a batch of
    samples, runs the model on the batch and post-processes each sample, and the report names the batch."""
    from edgekit.profile import profile_models
    from edgekit.profile_report import build_report, to_markdown

    calls = {"pre": 0, "post_rows": set(), "post": 0}

    class Pipe:
        def preprocess(self, raw):
            calls["pre"] += 1
            return {"x": raw.astype(np.float32).reshape(1, 32)}

        def postprocess(self, outs):
            calls["post"] += 1
            calls["post_rows"].add(outs[0].shape[0])
            return outs[0].argmax(1)

    chain = matmul_chain(tmp_path / "c.onnx", 1, k=32)
    raw = [np.full((4, 8), i, np.uint8) for i in range(3)]
    res = profile_models({"c": chain}, "x86-laptop", batch=4, prepost={"pipeline": Pipe(), "raw": raw},
                         op_profile=False, **QUICK)["c"]
    pp = res["prepost"]
    assert pp["status"] == "ok" and res["batch"] == 4
    assert calls["pre"] == calls["post"] >= 4 * pp["e2e"]["runs"] and calls["post_rows"] == {1}
    assert pp["batch"] == 4
    md = to_markdown(build_report([{"target": "x86-laptop", "batch": 4, "threads": None,
                                    "target_info": {"arch": "x86_64", "address": "local", "providers": []},
                                    "results": {"c": res}}], {"c": {"run": None}}, {}))
    assert "p50 ms per batch of 4" in md


def test_optional_provider_absence_is_in_the_markdown(tmp_path):
    """F11b: providers_missing was in the JSON only; the Markdown listed the absent provider as if it ran."""
    t = tmp_path / "opt.toml"
    t.write_text('arch = "x86_64"\naddress = "local"\n[[providers]]\nname = "OpenVINOExecutionProvider"\n'
                 'required = false\n[[providers]]\nname = "CPUExecutionProvider"\n')
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=32)
    out = tmp_path / "p.json"
    assert _exit(["profile", chain, "-t", str(t), "--no-op-profile", "-o", str(out), *FAST]) == 0
    r = json.loads(out.read_text())["runs"][0]["results"]["c"]
    assert r["providers_missing"] == ["OpenVINOExecutionProvider"]
    md = out.with_suffix(".md").read_text()
    assert "OpenVINOExecutionProvider (not available: not used), CPUExecutionProvider" in md


ARCH_NOTE = "target says aarch64, the device reports x86_64"


def test_a_device_architecture_note_is_in_the_profile_markdown(mixed):
    """F11a: the note an ssh:// device of another architecture gets was in the JSON, not the Markdown."""
    from edgekit.profile_report import to_markdown

    rep = run_profile([mixed["chain"]], ["x86-laptop"], op_profile=False, **QUICK)
    rep["runs"][0]["results"]["chain"]["note"] = ARCH_NOTE  # as profile_remote records it
    assert f"_Note: {ARCH_NOTE}._" in to_markdown(rep)


def test_a_device_architecture_note_is_in_the_compress_reports(tmp_path):
    """F11a: compress's manifest held the note; report.md/html/json said 'ok (native)' without it."""
    from edgekit.report import write_reports

    d = tmp_path / "run"
    m = fp32_run(d, 32)
    m.artifacts[0].latency["ssh-arm"] = {"status": "ok", "p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.2,
                                         "mean_ms": 1.0, "std_ms": 0.1, "runs": 30, "provider": "CPUExecutionProvider",
                                         "threads": 1, "batch": 1, "emulated": False, "note": ARCH_NOTE}
    m.write(d)
    rep = write_reports([d], html=tmp_path / "r.html", markdown=tmp_path / "r.md", json_path=tmp_path / "r.json")
    assert rep["runs"][0]["variants"][0]["latency"]["ssh-arm"]["note"] == ARCH_NOTE
    for f in ("r.html", "r.md", "r.json"):
        assert ARCH_NOTE in (tmp_path / f).read_text(), f
    assert f"ok ({ARCH_NOTE})" in (tmp_path / "r.md").read_text()


def test_output_suffix_picks_the_report_format(tmp_path):
    """F14: -o report.html wrote JSON into report.html (and Markdown to report.html.md); -o r.md wrote JSON
    into r.md. The suffix now picks the format; the HTML is one self-contained page of the same tables."""
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=32)
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    assert _exit(["profile", chain, "--no-op-profile", "-o", str(html), *FAST]) == 0
    assert _exit(["profile", chain, "--no-op-profile", "-o", str(md), *FAST]) == 0
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<th>p50 ms</th>" in page and "<td>c</td>" in page
    assert "src=" not in page and "href=" not in page and "edgekit.profile/1" not in page
    assert md.read_text().startswith("# edgekit profile\n") and "| c | fp32 |" in md.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx", "r.html", "r.md"]


def test_contradictory_time_limits_are_a_usage_error(tmp_path, capsys):
    """F15: --min-seconds above --max-seconds was accepted and the header promised both."""
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=32)
    assert _exit(["profile", chain, "--min-seconds", "2", "--max-seconds", "0.05", "--no-op-profile"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--min-seconds 2 is more than --max-seconds 0.05" in err, err
    # --max-seconds alone caps the default --min-seconds: nothing contradictory was asked
    assert _exit(["profile", chain, "--max-seconds", "0.05", "--min-runs", "3", "--no-op-profile"]) == 0


def test_a_run_cut_short_by_max_seconds_says_so(tmp_path):
    """F15: 'at least 100000 timed runs' was stated above a table of ~140 runs."""
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=32)
    out = tmp_path / "p.json"
    assert _exit(["profile", chain, "--min-runs", "100000", "--min-seconds", "0", "--max-seconds", "0.05",
                  "--warmup", "1", "--no-op-profile", "-o", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"][0]["results"]["c"]["runs"]
    md = out.with_suffix(".md").read_text()
    assert "at least 100000 timed runs" not in md
    assert f"--max-seconds 0.05 s stopped the timing before 100000 runs: c got {runs}" in md


def test_repeated_batch_and_threads_values_are_measured_once(tmp_path):
    """F17: --batch 2 --batch 2 --threads 1 --threads 1 gave four identical sections."""
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=32)
    out = tmp_path / "p.json"
    assert _exit(["profile", chain, "--batch", "2", "--batch", "2", "--batch", "3", "--threads", "1",
                  "--threads", "1", "--no-op-profile", "-o", str(out), *FAST]) == 0
    rep = json.loads(out.read_text())
    assert [(r["batch"], r["threads"]) for r in rep["runs"]] == [(2, 1), (3, 1)]
    assert rep["settings"]["batches"] == [2, 3] and rep["settings"]["threads"] == [1]


def test_the_input_shapes_timed_are_in_every_report(tmp_path):
    """F12: a dynamic sequence axis was generated at 128 and no report said so (nor the length of given
    inputs): a sequence model's p50 without its length cannot be compared."""
    from profile_models import embedding_bag

    m = embedding_bag(tmp_path / "tok.onnx")
    out = tmp_path / "p.json"
    assert _exit(["profile", m, "--batch", "2", "--no-op-profile", "-o", str(out), *FAST]) == 0
    r = json.loads(out.read_text())["runs"][0]["results"]["tok"]
    assert r["input_shapes"] == {"ids": [2, 128], "mask": [2, 128]}
    assert "Input shapes timed: ids [2, 128], mask [2, 128]." in out.with_suffix(".md").read_text()
    np.savez(tmp_path / "in.npz", ids=np.ones((3, 7), np.int64), mask=np.ones((3, 7), np.float32))
    assert _exit(["profile", m, "--inputs", str(tmp_path / "in.npz"), "--no-op-profile", "-o", str(out), *FAST]) == 0
    r = json.loads(out.read_text())["runs"][0]["results"]["tok"]
    assert r["input_shapes"] == {"ids": [1, 7], "mask": [1, 7]}


def test_profile_takes_flashs_ssh_options(tmp_path, monkeypatch):
    """F13: an unknown host key's error advised --accept-new-host-key, which profile did not accept, and a
    key outside ~/.ssh could not be used. profile now takes --identity/--known-hosts/--accept-new-host-key/
    --remote-python as flash does."""
    import sys

    from sshd import loopback_target, start_sshd

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no default keys, no known_hosts
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    srv = start_sshd(tmp_path / "server", env={"XDG_CACHE_HOME": str(tmp_path / "device-cache")})
    try:
        t, _ = loopback_target(srv, tmp_path)
        chain = matmul_chain(tmp_path / "c.onnx", 1, k=32)
        kh, out = tmp_path / "kh", tmp_path / "p.json"
        kh.write_text("")
        argv = ["profile", chain, "-t", str(t), "--identity", str(srv.user_key), "--known-hosts", str(kh),
                "--remote-python", sys.executable, "--no-op-profile", "-o", str(out), *FAST]
        assert _exit(argv) == 1  # the host key is new: refused, with the advice
        assert _exit(argv + ["--accept-new-host-key"]) == 0
        r = json.loads(out.read_text())["runs"][0]["results"]["c"]
        # F16: --no-op-profile means no breakdown here too (the device runner's 1-run profile showed through)
        assert r["status"] == "ok" and r["precision"] == "fp32" and "op_breakdown" not in r
        assert kh.read_text().strip()  # the accepted key was recorded
    finally:
        srv.stop()


def test_the_speed_gate_never_passes_on_emulated_timings(tmp_path, monkeypatch):
    """F19: compress --target arm64-emulated recorded speed_gate {"ratio": 0.26, "passed": true} from qemu
    timings, which the README says are never device latency."""
    from edgekit.quant import speed_gate
    from edgekit.targets import load_target

    fp32 = matmul_chain(tmp_path / "f.onnx", 1, k=32)
    q = dynamic_int8(fp32, tmp_path / "q.onnx")
    feeds = {"x": np.ones((1, 32), np.float32)}
    g = speed_gate.gate(fp32, q, load_target("arm64-emulated"), feeds, min_runs=3, min_seconds=0.0)
    assert list(g) == ["arm64-emulated"]
    g = g["arm64-emulated"]
    assert g["status"] == "emulated" and g["passed"] is False and "ratio" not in g
    assert "correctness only, never a speed verdict" in g["reason"]
    # a target whose measurement comes back emulated (an ssh:// board image under qemu, say)
    fake = {"fp32": {"status": "ok", "p50_ms": 7.0, "runs": 5, "emulated": True},
            "int8": {"status": "ok", "p50_ms": 1.0, "runs": 5, "emulated": True}}
    monkeypatch.setattr(speed_gate, "measure", lambda *a, **k: fake)
    g = speed_gate.gate(fp32, q, load_target("x86-laptop"), feeds)["x86-laptop"]
    assert g["status"] == "emulated" and g["passed"] is False and "ratio" not in g


def test_profile_refuses_an_unusable_identity_once_before_any_device(tmp_path, capsys):
    """A public key given as --identity was found per ssh:// target, after the local work, and came back
    as one 'unavailable' per device in the report; flash refuses it once, up front. Nothing listens on
    the ports: no connection is tried."""
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=8)
    targets = []
    for port in (1, 2):
        t = tmp_path / f"dev{port}.toml"
        t.write_text(f'arch = "x86_64"\naddress = "ssh://u@127.0.0.1:{port}/d"\nthreads = 1\n'
                     'providers = ["CPUExecutionProvider"]\n')
        targets += ["-t", str(t)]
    pub = tmp_path / "id.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDg0 me@host\n")
    out = tmp_path / "p.json"
    capsys.readouterr()
    rc = _exit(["profile", chain, *targets, "--identity", str(pub), "--no-op-profile", "-o", str(out), *FAST])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(err) == 1 and f"--identity: the identity file {pub} is a public key" in err[0], err
    assert not out.exists()
