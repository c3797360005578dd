"""The ``textcam`` console command: one subcommand per module in this package.

Subcommands import their stage lazily, so ``textcam --help`` and the runtime commands work on a
base install without torch. A :class:`~textcam.errors.TextcamError` becomes one line on stderr
and exit status 1; usage errors exit 2 (click's convention).

The library names the Python parameter a message is about (``input_size=3x5: ...``); the CLI
says the flag the user typed instead (``--input-size 3x5: ...``), through :data:`PARAM_FLAGS`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

import click

from textcam import __version__
from textcam.cli.bench_cmd import bench_command
from textcam.cli.build_engine_cmd import build_engine_command
from textcam.cli.demo_cmd import demo_command
from textcam.cli.explain_cmd import explain_command
from textcam.cli.export_cmd import export_command
from textcam.cli.info_cmd import info_command
from textcam.cli.safe_text import safe_text
from textcam.cli.selftest_cmd import selftest_command
from textcam.cli.semantics_cmd import semantics_command
from textcam.cli.serve_cmd import serve_command
from textcam.cli.triton_cmd import triton_command
from textcam.errors import TextcamError

PARAM_FLAGS: dict[str, dict[str, str]] = {
    "export": {"input_size": "--input-size", "target_layer": "--layer", "method": "--method", "mean": "--mean",
               "std": "--std", "class_names": "--class-names", "layout": "--layout"},
    "explain": {"class_index": "--class-index", "batch_size": "--batch-size"},
    "bench": {"batch_size": "--batch-sizes"},
    "semantics": {"lda": "--lda", "m": "-m", "vocab": "--vocab", "templates": "--templates", "probe": "--probe",
                  "batch_size": "--batch-size"},
    "triton": {"graph_backend": "--graph-backend"},
    "build-engine": {"precision": "--precision", "min_batch": "--min-batch", "opt_batch": "--opt-batch",
                     "max_batch": "--max-batch", "concurrency": "--concurrency", "workspace_gb": "--workspace-gb",
                     "timing_cache": "--timing-cache"},
}
"""Per command: the library's parameter names and the flags that set them."""


def flag_message(message: str, command: str | None) -> str:
    """``message`` with its parameter names said as ``command``'s flags: a leading ``name=value``,
    ``name value`` or ``name:``, and ``name=value`` after a space anywhere (advice such as
    "use method=gradcam"); other messages unchanged."""
    flags = PARAM_FLAGS.get(command or "", {})
    for name, flag in flags.items():
        if message.startswith(name) and message[len(name):len(name) + 1] in ("=", " ", ":"):
            separator = ":" if message[len(name)] == ":" else " "
            message = f"{flag}{separator}{message[len(name) + 1:]}"
            break
    for name, flag in flags.items():
        message = message.replace(f" {name}=", f" {flag} ")
    return message


def _fail(message: str, status: int = 1):
    """One line on stderr (control characters escaped), then exit ``status``."""
    with contextlib.suppress(OSError):  # stderr gone too: the exit status is all that is left
        click.echo(safe_text(message), err=True)
    sys.exit(status)


def _output_lost(exc: OSError):
    """stdout could not be written (a closed pipe, a full disk): one line on stderr, exit 1.

    Per Python's SIGPIPE notes, stdout is pointed at devnull so that the interpreter's final flush
    does not raise again (and print a second, unhelpful message).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass
    reason = "the reader closed the pipe" if exc.errno == errno.EPIPE else (exc.strerror or str(exc))
    _fail(f"error: cannot write the output to stdout ({reason})")


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            if sys.stdout is None:
                raise TextcamError("stdout is closed; run the command with its output going somewhere")
            result = super().invoke(ctx)
            try:
                if sys.stdout is not None:
                    sys.stdout.flush()  # a full disk or closed pipe shows here, not at interpreter exit
            except OSError as exc:
                _output_lost(exc)
            return result
        except TextcamError as exc:
            _fail(f"error: {flag_message(str(exc), ctx.invoked_subcommand)}")
        except click.ClickException as exc:  # usage errors quote the user's values: escape them, then click shows it
            exc.message = safe_text(exc.message)
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) or _raised_writing_stdout(exc) or _stdout_broken():
                _output_lost(exc)
            # the environment, not a bug: a file that vanished, a disk that filled, a permission
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"error: {where}{exc.strerror or exc}")


def _raised_writing_stdout(exc: BaseException) -> bool:
    """Whether a frame of ``exc``'s traceback was handling stdout (click.echo's ``file``, tqdm's ``fp``)."""
    streams = {id(s) for s in (sys.stdout, sys.__stdout__) if s is not None}
    trace = exc.__traceback__
    while trace is not None:
        if any(id(value) in streams for value in trace.tb_frame.f_locals.values()):
            return True
        trace = trace.tb_next
    return False


def _stdout_broken() -> bool:
    """Whether stdout cannot take its pending output (then that is what the OSError was about)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError:
        return True
    except ValueError:  # closed file
        return True
    return False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="textcam")
def main() -> None:
    """Explain a vision model's predictions: where it looked (a CAM heatmap) and what it saw.

    \b
    Typical flow:
      textcam demo                      # everything on a built-in default, offline
      textcam export --model torchvision:resnet50 --weights resnet50.pt -o resnet50.textcam
      textcam info resnet50.textcam
      textcam explain resnet50.textcam photos/ --out overlays/
      textcam bench resnet50.textcam    # explanation latency vs plain inference
      textcam build-engine resnet50.textcam --precision fp16   # TensorRT engine for this GPU
    """


main.add_command(export_command)
main.add_command(explain_command)
main.add_command(info_command)
main.add_command(bench_command)
main.add_command(demo_command)
main.add_command(semantics_command)
main.add_command(build_engine_command)
main.add_command(selftest_command)
main.add_command(serve_command)
main.add_command(triton_command)
