"""Shared CLI plumbing: error-to-exit-code mapping, --json output, progress."""
from __future__ import annotations

import functools
import json
import os
import sys

import click

from ..errors import EdgekitError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def main_entry(cli, argv=None):
    import warnings

    # torch's notice about its prototype nested tensors (nn.TransformerEncoder with a padding mask, in
    # eval mode) says nothing about the user's model or edgekit's results
    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
    _exit_on_sigterm()
    _JSON_STATE.clear()
    try:
        rv = cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        _json_error(argv, "aborted", 130)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        _json_error(argv, e.format_message(), e.exit_code)
        sys.exit(e.exit_code)
    except EdgekitError as e:
        _json_error(argv, _report_error(e, argv), e.exit_code)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        _json_error(argv, "interrupted", 130)
        sys.exit(130)
    except SystemExit as e:
        if e.code == 143:  # interrupts' SIGTERM handler: a kill or a CI timeout, the common stop in automation
            _json_error(argv, "terminated", 143)
        raise
    except Exception as e:  # a bug: short message, traceback only with --debug
        if _debug_requested(argv):
            raise
        from ..errors import quote_paths

        msg = quote_paths(_output_problem(e), _given_words(argv))
        if msg:
            click.echo(f"edgekit: error: {msg}", err=True)
            _json_error(argv, msg, 1)
            sys.exit(1)
        msg = f"internal error: {type(e).__name__}: {e}"
        click.echo(f"edgekit: {msg} (rerun with --debug for the traceback)", err=True)
        _json_error(argv, msg, 1)
        sys.exit(1)
    if isinstance(rv, int) and rv:
        sys.exit(rv)
    return 0


def _exit_on_sigterm() -> None:
    from ..interrupts import install

    install()


# what the system refuses for reasons outside edgekit (a full disk, a read-only mount, permissions)
_OUTPUT_ERRNOS = ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "EIO")


def _output_problem(e: Exception) -> str:
    """One line naming the output for a write the system refused ('' for anything else): it read as
    'internal error' naming a staging or temp file the user never asked for."""
    import errno

    from ..outdir import output_named

    if not isinstance(e, OSError) or e.errno not in {getattr(errno, n, None) for n in _OUTPUT_ERRNOS}:
        return ""
    # without a file name only a full disk is the output's for sure: a nameless EACCES can be /dev/shm refusing
    # a semaphore, which is no fault of OUTDIR
    if not e.filename and e.errno not in {getattr(errno, n, None) for n in ("ENOSPC", "EDQUOT", "EFBIG")}:
        return ""
    # a copy or rename names its source first: the destination (filename2) is the file being written
    hit = output_named(e.filename2) if getattr(e, "filename2", None) else None
    if hit is None:
        hit = output_named(e.filename)
    if hit is None:
        return ""
    out, name = hit
    return f"{out}: {e.strerror or e}" + (f" (while writing {name})" if name else "")


def _debug_requested(argv) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("EDGEKIT_DEBUG") == "1"


def _given_words(argv) -> list:
    """The command line's words, and the values of --opt=value words."""
    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    return args + [a.split("=", 1)[1] for a in args if a.startswith("--") and "=" in a]


def _report_error(e: EdgekitError, argv=None) -> str:
    from ..errors import quote_paths

    if _debug_requested(None):
        import traceback

        traceback.print_exc()
    text = quote_paths(str(e), _given_words(argv))
    msg = text.splitlines()[0] if text else type(e).__name__
    click.echo(f"edgekit: error: {msg}", err=True)
    return msg


# this run's --json: 'flag' -> bool once click processed the option ('-o --json' is a value of -o);
# 'written' once a command printed its JSON document: a failing flash or devices status prints its
# per-device results before exiting non-zero, and a second document would make stdout unparseable
_JSON_STATE: dict = {}


def _json_error(argv, message: str, code: int) -> None:
    """With --json, a failure is a JSON document on stdout too ({"error", "exit_code"}): a script parsing
    stdout got nothing from most commands on error, while flash and devices status printed their results."""
    if "flag" in _JSON_STATE:
        wanted = _JSON_STATE["flag"]
    else:  # click failed before it processed --json (an unknown option, say): the words given decide
        args = sys.argv[1:] if argv is None else list(argv)
        if "--" in args:
            args = args[:args.index("--")]
        wanted = "--json" in args
    if not wanted or _JSON_STATE.get("written"):
        return
    try:
        click.echo(json.dumps({"error": message, "exit_code": code}, indent=2))
    except OSError:  # the reader of stdout has gone (| head): the error on stderr and the exit code remain
        pass


def echo_json(obj) -> None:
    from ..fsutil import _json_default

    click.echo(json.dumps(obj, indent=2, default=_json_default))
    _JSON_STATE["written"] = True


def _note_json_flag(ctx, param, value):
    _JSON_STATE["flag"] = bool(value)
    return value


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, callback=_note_json_flag,
                        help="Print machine-readable JSON on stdout.")(f)


TASK_HELP = ("What the model's first output is: auto (default) guesses from its shape (float [N, C], C >= 2: "
             "class scores); regression: C continuous targets, scored by mean R^2 to FP32 and distilled with MSE; "
             "classification; multi-label: a yes/no per class [N, C] (sigmoid, logit > 0), scored by micro "
             "F1 against 0/1 labels 'y' [N, C] or against FP32's decisions; embedding (cosine); segmentation: "
             "class scores per position [N, C, d1, ...], scored by mean IoU over classes against labels "
             "'y' [N, d1, ...] or against FP32's classes; token-classification: class scores per token [N, L, C] "
             "(NER), scored by token accuracy (labels 'y' [N, L]) or token agreement with FP32, or by entity F1 when "
             "its class names (config.id2label) are BIO tags; causal-lm: a language model's next-token scores "
             "[N, L, V], scored by next-token accuracy against the data's own token ids shifted by one, perplexity "
             "beside it.")


def task_option(f):
    """--task for every command that scores or trains a model: the output's shape cannot tell class scores
    from regression targets."""
    from ..loader import TASK_CHOICES

    return click.option("--task", type=click.Choice(TASK_CHOICES), default=None, help=TASK_HELP)(f)


def settle_task(src, task, *datasets, distills: bool = True, probe=None) -> list:
    """Apply --task to the loaded model, or note once (on stderr) a classifier guess nothing confirms (probe:
    data the guess is checked on, the calibration set). Returns the notes printed, for the manifest to record
    beside the command's own."""
    from ..loader import apply_task, guessed_task_note

    apply_task(src, task)
    note = guessed_task_note(src, *datasets, distills=distills, probe=probe)
    if note:
        click.echo(f"edgekit: note: {note}", err=True)
    return [note] if note else []


def output_option(required=True, help="Output directory."):
    def deco(f):
        return click.option("-o", "--output", type=click.Path(), required=required, help=help)(f)

    return deco


def check_output_file(path, flag: str) -> None:
    """Refuse an output FILE that cannot be written, before any work is done (a profile measures for
    minutes first): usage error (exit 2) naming the flag and the path, never an OSError from the write."""
    if path is None:
        return
    from pathlib import Path

    from ..errors import UsageError
    from ..outdir import check_parents

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is a directory; give a file name")
    check_parents(p, f"{flag} {p}")


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that refuses NaN and infinity: range comparisons with NaN are all False, so
    FloatRange(min=0) took 'nan' (a profile loop then ran 'until it has taken NaN s')."""

    def convert(self, value, param, ctx):
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r}: NaN or infinite values are refused", param, ctx)
        return rv


def console():
    from rich.console import Console

    return Console(stderr=True)


def wraps_errors(f):
    """Library errors propagate to main_entry; this only keeps the signature tidy."""

    @functools.wraps(f)
    def inner(*a, **k):
        return f(*a, **k)

    return inner
