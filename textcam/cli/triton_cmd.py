"""``textcam triton``: write a Triton Inference Server model repository for a bundle."""

from __future__ import annotations

import click

from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import safe_text


@click.command("triton", epilog=BUNDLE_HELP)
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(), help="The repository folder to write.")
@click.option("--graph-backend", type=click.Choice(["onnxruntime", "tensorrt", "python"]), default="onnxruntime",
              show_default=True,
              help="What runs the graph: Triton's onnxruntime backend, its tensorrt backend (a built engine, "
                   "see --gpu), or ONNX Runtime inside the Python backend (a stand-in for servers without the "
                   "onnxruntime backend, such as the PyTriton wheel's; slower).")
@click.option("--max-batch-size", type=int, default=16, show_default=True,
              help="Largest batch Triton forms (dynamic batching) or a client sends.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Let Triton gather concurrent requests into one graph call.")
@click.option("--max-queue-delay-us", type=int, default=2000, show_default=True,
              help="How long the batcher waits for more requests (microseconds).")
@click.option("--instances", type=int, default=1, show_default=True, help="Graph model instances (per GPU on GPUs).")
@click.option("--kind", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Where the graph model's instances run; auto lets Triton choose (GPUs when it has them).")
@click.option("--post-instances", type=int, default=1, show_default=True,
              help="Post-processing model instances (CPU).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per graph instance.")
@click.option("--gpu", default=None, help="With --graph-backend tensorrt: the compute capability of the engine "
                                          "to serve (e.g. 9.0 or sm90; `textcam info` lists the bundle's engines).")
@click.option("--tensorrt", "tensorrt_version", default=None,
              help="With --graph-backend tensorrt: the TensorRT version of your Triton, when the bundle has "
                   "engines for several.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="With --graph-backend tensorrt: the engine precision (default: the most precise there is).")
@click.option("--no-fused", is_flag=True, help="Serve model.onnx even when the bundle has a fused ranking graph.")
@click.option("--force", is_flag=True, help="Replace a repository this command wrote before.")
def triton_command(bundle, out, graph_backend, max_batch_size, dynamic_batching, max_queue_delay_us, instances, kind,
                   post_instances, threads, gpu, tensorrt_version, precision, no_fused, force):
    """Write a Triton Inference Server model repository that serves BUNDLE.

    \b
    Three models: textcam_graph (the joint graph), textcam_post (label and phrases, Python
    backend, needs `pip install textcam` in the server's Python) and the ensemble textcam that
    clients call with a preprocessed image tensor and a target class (-1: predicted).
    The repository's README.md has the server command and a client call.

    \b
    Examples:
      textcam triton resnet50.textcam -o models
      tritonserver --model-repository models
      textcam selftest resnet50.textcam --triton 127.0.0.1:8000
      textcam triton resnet50.textcam -o models --graph-backend tensorrt --gpu 9.0 --instances 2
    """
    from textcam.serving.triton_repo import RepositoryOptions, write_repository

    options = RepositoryOptions(graph_backend=graph_backend, max_batch_size=max_batch_size,
                                dynamic_batching=dynamic_batching, max_queue_delay_us=max_queue_delay_us,
                                instances=instances, kind=kind, post_instances=post_instances, threads=threads,
                                gpu=gpu, tensorrt=tensorrt_version, precision=precision, use_fused=not no_fused)
    report = write_repository(resolve_bundle(bundle), out, options, force=force)
    graph = "the fused ranking graph" if report.fused else report.graph_file
    checked = "checked against Triton's schema" if report.validated else \
        "not checked against Triton's schema (pip install 'tritonclient[grpc]' to check)"
    click.echo(safe_text(f"{report.path}: textcam_graph ({report.graph_backend}, {graph}), textcam_post, "
                         f"ensemble textcam; configs {checked}"))
    click.echo(safe_text(f"serve: tritonserver --model-repository {report.path.absolute()}"))
