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
