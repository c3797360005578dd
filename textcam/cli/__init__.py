"""The ``textcam`` console command: one subcommand per module in this package.

Subcommands import their stage lazily, so ``textcam --help`` and the runtime commands work on a
base install without torch. A :class:`~textcam.errors.TextcamError` becomes one line on stderr
and exit status 1; usage errors exit 2 (click's convention).
"""

from __future__ import annotations

import sys

import click

from textcam import __version__
from textcam.cli.bench_cmd import bench_command
from textcam.cli.build_engine_cmd import build_engine_command
from textcam.cli.demo_cmd import demo_command
from textcam.cli.explain_cmd import explain_command
from textcam.cli.export_cmd import export_command
from textcam.cli.info_cmd import info_command
from textcam.cli.semantics_cmd import semantics_command
from textcam.errors import TextcamError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TextcamError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


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
