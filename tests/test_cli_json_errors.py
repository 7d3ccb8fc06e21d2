"""With --json a failure is a JSON document on stdout too ({"error", "exit_code"}) (sweep36 F2): most
commands printed nothing there on error while flash and devices status printed their per-device results,
so a script parsing stdout got a parse error instead of the reason."""
import json

import pytest

from cliutil import run_cli


@pytest.mark.parametrize("argv", [
    ["targets", "show", "nosuch"],
    ["report", "{d}/nosuch"],
    ["quantize", "{d}/nosuch.onnx", "-o", "{d}/q"],
    ["bundle", "{d}/nosuch", "-o", "{d}/x.ekb"],
    ["prepost", "check", "{d}/nofile.json"],
    ["compress"],  # a click usage error: missing MODEL
])
def test_a_failing_command_prints_one_json_error_on_stdout(tmp_path, capsys, argv):
    argv = [a.format(d=tmp_path) for a in argv] + ["--json"]
    rc = run_cli(argv)
    out, err = capsys.readouterr()
    assert rc == 2, err
    doc = json.loads(out)  # exactly one document, nothing else on stdout
    assert doc["exit_code"] == rc and doc["error"]
    assert doc["error"] in err  # the same reason as the one-line error on stderr


def test_without_json_stdout_stays_empty_on_error(tmp_path, capsys):
    assert run_cli(["targets", "show", "nosuch"]) == 2
    assert capsys.readouterr().out == ""
    # a value that happens to read '--json' after '--' is not the flag
    assert run_cli(["targets", "show", "--", "--json"]) == 2
    assert capsys.readouterr().out == ""


def test_a_command_that_printed_its_results_adds_no_second_document(tmp_path, capsys):
    rc = run_cli(["devices", "status", "--device", str(tmp_path / "nodev"), "--json"])
    out, _ = capsys.readouterr()
    assert rc == 1
    doc = json.loads(out)  # still one document: the per-device results, not an error object after them
    assert not (isinstance(doc, dict) and set(doc) == {"error", "exit_code"}), doc


def test_a_closed_stdout_keeps_the_one_line_error_and_the_exit_code(tmp_path):
    # the JSON error's write into a pipe whose reader had gone raised BrokenPipeError inside the handler:
    # two chained tracebacks, exit 1 for a usage error
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "edgekit", "targets", "show", "nosuch", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # the reader is gone before edgekit writes
    err = p.stderr.read()
    assert p.wait(timeout=120) == 2, err
    assert "Traceback" not in err and err.strip().startswith("edgekit: error: unknown target 'nosuch'"), err


def test_a_value_spelled_json_is_not_the_flag(tmp_path, capsys):
    rc = run_cli(["bundle", str(tmp_path / "nosuch"), "-o", "--json"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", (out, err)


def test_sigterm_ends_a_json_run_with_a_json_error(tmp_path):
    # SIGTERM (a kill, a CI timeout) left stdout empty while Ctrl-C printed the JSON error
    import signal
    import subprocess
    import sys

    from profile_models import matmul_chain

    chain = matmul_chain(tmp_path / "c.onnx", 1, k=16)
    p = subprocess.Popen([sys.executable, "-m", "edgekit", "profile", chain, "--no-op-profile", "--min-seconds", "60",
                          "--max-seconds", "60", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # the timing has started: the run is inside the command, not importing
        if "profiling" in line:
            break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert json.loads(out) == {"error": "terminated", "exit_code": 143}
