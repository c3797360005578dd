"""Ray Serve and Triton hosting vs an in-process ``Explainer``: requests/s and p50/p99 latency vs client concurrency.

Contenders, on the same machine and the built-in default bundle, with the same PNG scenes:

- ``in-process``: one ``Explainer`` shared by N client threads, each request = open the PNG
  bytes + ``explain`` (what a Python service embedding textcam does per request);
- ``ray-1`` / ``ray-2``: ``textcam.serving.ray_app`` with 1 and 2 replicas, N client threads
  each holding a keep-alive HTTP connection, ``POST /explain`` with the PNG bytes;
- ``triton-batched`` / ``triton-unbatched``: the repository ``textcam triton --graph-backend python``
  writes, served by the PyTriton wheel's ``tritonserver`` (the only Triton reachable here: its graph
  model is ONNX Runtime inside the Python backend, the stand-in for Triton's onnxruntime backend),
  with and without the dynamic batcher (``--batch-wait-ms`` as its queue delay); each client opens
  and preprocesses the PNG itself (the ensemble takes tensors) and calls the ensemble over HTTP.
  Needs the Triton environment (``--triton-python``, default ``.venv-triton/bin/python``, which
  scripts/test.sh makes); without it these rows are left out and the report says so.

For each contender and concurrency (1, 2, 4, 8 by default) the clients run for ``--duration``
seconds after a warm-up; requests/s, p50 and p99 of the per-request latency are reported, and,
as ratios within this run, each Ray row against the in-process row at the same concurrency.
``in-process`` runs first and again last (both kept; the report uses their mean, and the spread
says how much the machine drifted). The serving overhead per request is ``p50(ray-1, 1 client) -
p50(in-process, 1 client)``, given also as a share of the graph's own time (median of the raw
graph call, batch 1). Replicas and the in-process explainer use ``--threads`` backend threads, with
ONNX Runtime's spinning off (replicas: ``ServeSettings``' default; the Triton graph model: its own
session options), so no idle pool busy-waits while another contender runs. The contenders run one
after another, not interleaved; an in-process request that measures faster than the graph call it
contains, beyond both sides' interquartile ranges (``textcam.runtime.timing.contradiction``), makes
the report refuse the overhead figures (it says why) and the script exit 1.

Ray binds to the machine's network address even when told 127.0.0.1, so the run happens in a
private network namespace (loopback only): as root the script re-executes itself under
``unshare -n``; otherwise run it so yourself::

    sudo unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/serving.py'

    python benchmarks/serving.py                              # 5 s per point
    python benchmarks/serving.py --duration 2 --concurrency 1,4 --out /tmp/serving-smoke
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PORT = 8765
REEXEC_GUARD = "TEXTCAM_SERVING_BENCH_NETNS"
CONTENDERS = ("ray-1", "ray-2", "triton-batched", "triton-unbatched")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def private_network() -> bool:
    """True inside a network namespace that has only loopback (/proc/net is the caller's namespace;
    /sys/class/net would show the namespace that mounted /sys)."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return [line.split(":", 1)[0].strip() for line in lines] == ["lo"]


def reexec_in_namespace() -> None:
    """Run this script again inside ``unshare -n`` (root only) and exit with its status."""
    if os.environ.get(REEXEC_GUARD):  # already re-executed once: never again, whatever the check said
        raise SystemExit("benchmarks/serving.py: the private network namespace still shows other interfaces")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        raise SystemExit("benchmarks/serving.py: Ray must run in a private network namespace; as root run: "
                         "unshare -n sh -c 'ip link set lo up && exec python benchmarks/serving.py ...'")
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in (sys.executable, __file__, *sys.argv[1:]))
    # a PID namespace too where it can be had: every Ray process dies with the run
    pid_ns = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True,
                            check=False).returncode == 0
    command = ["unshare", "-n", *(["-p", "-f", "--mount-proc"] if pid_ns else []), "sh", "-c",
               f"ip link set lo up && exec {quoted}"]
    raise SystemExit(subprocess.run(command, check=False, env={**os.environ, REEXEC_GUARD: "1"}).returncode)


def make_images(count: int, size: int) -> list[bytes]:
    """``count`` shapes-world scenes as PNG bytes, ``size`` x ``size`` pixels."""
    from PIL import Image

    from textcam.shapes_world.generator import ShapesWorld

    world = ShapesWorld(64, seed=11)
    bodies = []
    for index in range(count):
        image = Image.fromarray(world.scene(index).image)
        if size != 64:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def drive(call: Callable[[int, bytes], None], bodies: list[bytes], threads: int, seconds: float,
          warmup: int) -> dict:
    """``threads`` clients calling ``call(thread, body)`` in a loop for ``seconds``; per-request latency."""
    for index in range(warmup):
        call(0, bodies[index % len(bodies)])
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failures = [0] * threads
    stop_at = time.perf_counter() + seconds

    def client(number: int) -> None:
        turn = number
        while time.perf_counter() < stop_at:
            body = bodies[turn % len(bodies)]
            turn += 1
            start = time.perf_counter()
            try:
                call(number, body)
            except Exception:  # counted, not fatal: a benchmark reports failures, it does not hide them
                failures[number] += 1
                continue
            latencies[number].append(time.perf_counter() - start)

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    found = np.array([v for values in latencies for v in values]) * 1000
    return {
        "requests": int(found.size),
        "failures": int(sum(failures)),
        "seconds": round(elapsed, 3),
        "rps": round(found.size / elapsed, 2),
        "p50_ms": round(float(np.percentile(found, 50)), 3) if found.size else None,
        "p99_ms": round(float(np.percentile(found, 99)), 3) if found.size else None,
        # the quartiles: the noise the consistency check (summarize) measures against
        "q1_ms": round(float(np.percentile(found, 25)), 3) if found.size else None,
        "q3_ms": round(float(np.percentile(found, 75)), 3) if found.size else None,
    }


class HttpClients:
    """One keep-alive connection per client thread to the served application."""

    def __init__(self, port: int, threads: int):
        self.port = port
        self.connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(threads)]

    def __call__(self, number: int, body: bytes) -> None:
        connection = self.connections[number]
        try:
            connection.request("POST", "/explain", body=body, headers={"Content-Type": "image/png"})
            answer = connection.getresponse()
            payload = answer.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # reconnect on the next call
            raise
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}: {payload[:200]!r}")
        json.loads(payload)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


class TritonClients:
    """One tritonclient HTTP connection per thread (its gevent connection cannot change threads, so it is
    made in the thread that uses it); each call preprocesses the PNG as a client must."""

    def __init__(self, url: str, threads: int, spec):
        import tritonclient.http as triton_http

        self.http, self.spec, self.url = triton_http, spec, url
        self.local = threading.local()
        self.clients: list = []

    def _client(self):
        if not hasattr(self.local, "client"):
            self.local.client = self.http.InferenceServerClient(self.url, network_timeout=60)
            self.clients.append(self.local.client)
        return self.local.client

    def __call__(self, number: int, body: bytes) -> None:
        from textcam.runtime.images import DEFAULT_MAX_PIXELS, preprocess
        from textcam.serving.ray_http import open_image

        tensor, _ = preprocess(open_image(body, DEFAULT_MAX_PIXELS), self.spec)
        inputs = [self.http.InferInput("image", [1, *tensor.shape], "FP32"),
                  self.http.InferInput("target_class", [1, 1], "INT64")]
        inputs[0].set_data_from_numpy(tensor[None])
        inputs[1].set_data_from_numpy(np.array([[-1]], dtype=np.int64))
        result = self._client().infer("textcam", inputs)
        result.as_numpy("concept_phrases")

    def close(self) -> None:
        self.clients.clear()  # each closes with its thread's hub; closing here would switch threads


def measure_triton(args, bodies: list[bytes], rows: list[dict]) -> dict:
    """The Triton rows (appended to ``rows``); returns what the report says about them."""
    import tempfile

    from textcam.cli.bundle_arg import resolve_bundle
    from textcam.runtime.bundle import Bundle
    from textcam.serving.triton_local import LocalTritonServer
    from textcam.serving.triton_repo import RepositoryOptions, write_repository

    python = args.triton_python
    if not python.is_file():
        log(f"no Triton environment at {python}: Triton rows left out")
        return {"triton": f"not run: no Triton environment at {python}"}
    bundle = Bundle.open(resolve_bundle(args.bundle))
    startup = {}
    for name, batched in (("triton-batched", True), ("triton-unbatched", False)):
        with tempfile.TemporaryDirectory() as work:
            options = RepositoryOptions(graph_backend="python", max_batch_size=args.max_batch_size,
                                        dynamic_batching=batched, max_queue_delay_us=int(args.batch_wait_ms * 1000),
                                        threads=args.threads)
            repo = write_repository(bundle, Path(work) / "models", options).path
            started = time.perf_counter()
            server = LocalTritonServer(python, repo, Path(work))
            startup[name] = round(time.perf_counter() - started, 2)
            try:
                for threads in args.concurrency:
                    log(f"{name}, {threads} client(s)")
                    clients = TritonClients(server.url, threads, bundle.input)
                    rows.append({"contender": name, "pass": "", "concurrency": threads,
                                 **drive(clients, bodies, threads, args.duration, args.warmup)})
                    clients.close()
            finally:
                server.stop()
    return {"triton": "run", "triton_startup_s": startup}


def in_process_call(explainer) -> Callable[[int, bytes], None]:
    from textcam.serving.ray_http import explanation_payload, open_image

    def call(_number: int, body: bytes) -> None:
        # the same per-request work as a replica: open the bytes, explain, build the JSON answer
        image = open_image(body, explainer.max_pixels)
        json.dumps(explanation_payload(explainer.explain(image)))

    return call


def graph_stats(explainer, rounds: int = 200) -> dict:
    """The raw graph call at batch 1 (the graph's own time, no pre/post-processing):
    ``textcam.runtime.timing.summarize``'s median, quartiles etc. in ms."""
    from textcam.runtime.timing import summarize

    spec = explainer.bundle.input
    batch = np.random.default_rng(0).standard_normal((1, 3, spec.height, spec.width)).astype(np.float32)
    classes = np.full(1, -1, dtype=np.int64)
    runner = explainer.runner
    for _ in range(10):
        runner.run(batch, classes)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        runner.run(batch, classes)
        times.append((time.perf_counter() - start) * 1000)
    return summarize(times)


def measure(args) -> dict:
    import ray
    from ray import serve

    from textcam.cli.bundle_arg import resolve_bundle
    from textcam.runtime import Explainer
    from textcam.serving.ray_app import build_app, serve_bundle
    from textcam.serving.ray_settings import ServeSettings

    bodies = make_images(args.images, args.image_size)
    settings = {"threads": args.threads, "max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms}
    explainer = Explainer(resolve_bundle(args.bundle), batch_size=args.max_batch_size,
                          backend_options={"intra_op_threads": args.threads, "allow_spinning": False})
    graph_timing = graph_stats(explainer)
    graph = graph_timing["median_ms"]
    log(f"graph {graph:.3f} ms per call (batch 1); native core: {explainer.native}")
    rows: list[dict] = []

    def run_in_process(tag: str) -> None:
        call = in_process_call(explainer)
        for threads in args.concurrency:
            log(f"in-process ({tag}), {threads} client(s)")
            rows.append({"contender": "in-process", "pass": tag, "concurrency": threads,
                         **drive(call, bodies, threads, args.duration, args.warmup)})

    run_in_process("first")
    load_before = os.getloadavg()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    serve_bundle(args.bundle, replicas=1, port=PORT, **settings)
    startup_s = time.perf_counter() - started
    for replicas in (1, 2):
        if replicas == 2:
            serve.run(build_app(ServeSettings(bundle=args.bundle, replicas=2, **settings)), name="textcam",
                      route_prefix="/")
        for threads in args.concurrency:
            log(f"ray-{replicas}, {threads} client(s)")
            clients = HttpClients(PORT, threads)
            rows.append({"contender": f"ray-{replicas}", "pass": "", "concurrency": threads,
                         **drive(clients, bodies, threads, args.duration, args.warmup)})
            clients.close()
    ray.shutdown()
    triton = measure_triton(args, bodies, rows)
    run_in_process("last")
    return {**triton, "graph_ms": round(graph, 4), "graph_timing": graph_timing, "native": explainer.native,
            "input_size": [explainer.bundle.input.height, explainer.bundle.input.width], "rows": rows,
            "serve_startup_s": round(startup_s, 2), "load_during_ray": [round(v, 2) for v in load_before]}


def summarize(rows: list[dict], concurrency: list[int], graph: float, graph_timing: dict | None = None) -> dict:
    """Per concurrency: each contender's rps/p50/p99 (in-process: mean of its two passes) and the ratios;
    ``refused`` says why the overhead figures are left out when the in-process request measured faster
    than the graph call it contains (``graph_timing``: :func:`graph_stats`)."""
    from textcam.runtime.timing import contradiction

    table = []
    for threads in concurrency:
        inproc = [r for r in rows if r["contender"] == "in-process" and r["concurrency"] == threads]
        base = {key: round(statistics.mean(r[key] for r in inproc), 3) for key in ("rps", "p50_ms", "p99_ms")}
        spread = (round(abs(inproc[0]["rps"] - inproc[-1]["rps"]) / max(base["rps"], 1e-9), 3)
                  if len(inproc) == 2 else None)
        table.append({"contender": "in-process", "concurrency": threads, **base, "rps_drift": spread,
                      "failures": sum(r["failures"] for r in inproc)})
        for name in CONTENDERS:
            for row in (r for r in rows if r["contender"] == name and r["concurrency"] == threads):
                table.append({"contender": name, "concurrency": threads, "rps": row["rps"], "p50_ms": row["p50_ms"],
                              "p99_ms": row["p99_ms"], "failures": row["failures"],
                              "rps_vs_in_process": round(row["rps"] / base["rps"], 3) if base["rps"] else None,
                              "p50_vs_in_process": (round(row["p50_ms"] / base["p50_ms"], 3)
                                                    if row["p50_ms"] and base["p50_ms"] else None)})
    first = min(concurrency)
    inproc_p50 = next(r["p50_ms"] for r in table if r["contender"] == "in-process" and r["concurrency"] == first)
    ray_p50 = next((r["p50_ms"] for r in table if r["contender"] == "ray-1" and r["concurrency"] == first), None)
    overhead = None if ray_p50 is None else round(ray_p50 - inproc_p50, 3)
    triton_p50 = next((r["p50_ms"] for r in table if r["contender"] == "triton-unbatched"
                       and r["concurrency"] == first), None)
    triton_overhead = None if triton_p50 is None else round(triton_p50 - inproc_p50, 3)
    refused = None
    inproc = [r for r in rows if r["contender"] == "in-process" and r["concurrency"] == first and r.get("q1_ms")]
    if graph_timing and inproc:
        request = {"median_ms": inproc_p50, "rounds": sum(r["requests"] for r in inproc),
                   "q1_ms": statistics.mean(r["q1_ms"] for r in inproc),
                   "q3_ms": statistics.mean(r["q3_ms"] for r in inproc)}
        refused = contradiction({"in-process request": request, "graph call": graph_timing},
                                [("in-process request", "graph call")])
    if refused:
        overhead = triton_overhead = None  # no figure from numbers that contradict each other
    return {"table": table, "refused": refused, "overhead": {
        "triton_unbatched_p50_ms": triton_p50, "triton_overhead_ms": triton_overhead,
        "triton_overhead_over_graph": None if triton_overhead is None else round(triton_overhead / graph, 2),
        "concurrency": first, "in_process_p50_ms": inproc_p50, "ray_1_p50_ms": ray_p50, "overhead_ms": overhead,
        "overhead_over_graph": None if overhead is None else round(overhead / graph, 2),
        "in_process_over_graph": None if refused else round(inproc_p50 / graph, 2)}}


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    o = report["summary"]["overhead"]
    lines = [
        "# Ray Serve and Triton hosting vs in-process",
        "",
        f"`python benchmarks/serving.py` (in a private network namespace): bundle {s['bundle']} "
        f"({report['input_size'][0]}x{report['input_size'][1]} input), {s['images']} PNG scenes of "
        f"{s['image_size']}x{s['image_size']}, "
        f"{s['duration']} s per point after {s['warmup']} warm-up calls; backend threads {s['threads']} per "
        f"replica and in-process (ONNX Runtime spinning off); max_batch_size {s['max_batch_size']}, "
        f"batch_wait_ms {s['batch_wait_ms']}. "
        "`in-process`: one Explainer shared by the client threads (open bytes + explain + JSON per request; "
        "mean of a pass before and after the served rows). `ray-N`: Serve with N replicas, keep-alive HTTP clients. "
        "`triton-*`: the PyTriton wheel's tritonserver with the `textcam triton --graph-backend python` repository "
        "(graph in ONNX Runtime inside the Python backend: a stand-in, slower than Triton's onnxruntime backend), "
        "with and without dynamic batching; clients preprocess and send tensors.",
        "",
        "| contender | clients | requests/s | p50 ms | p99 ms | rps vs in-process | p50 vs in-process | failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["summary"]["table"]:
        lines.append(
            f"| {row['contender']} | {row['concurrency']} | {row['rps']:.1f} | {_ms(row['p50_ms'])} | "
            f"{_ms(row['p99_ms'])} | {_ratio(row.get('rps_vs_in_process'))} | {_ratio(row.get('p50_vs_in_process'))} "
            f"| {row['failures']} |"
        )
    refused = report["summary"].get("refused")
    lines += [
        "",
        f"Graph alone (raw call, batch 1): {report['graph_ms']:.3f} ms. Refused: {refused}."
        if refused else
        f"Graph alone (raw call, batch 1): {report['graph_ms']:.3f} ms. Per request at {o['concurrency']} client: "
        f"in-process {_ms(o['in_process_p50_ms'])} ms ({o['in_process_over_graph']}x the graph), "
        f"ray-1 {_ms(o['ray_1_p50_ms'])} ms; serving overhead {_ms(o['overhead_ms'])} ms = "
        f"{o['overhead_over_graph']}x the graph's time (HTTP, Serve's proxy, the hop to the replica, and up to "
        f"{s['batch_wait_ms']:g} ms of batch wait while a lone request waits for company).",
        "",
        (f"Triton (unbatched) at {o['concurrency']} client: {_ms(o['triton_unbatched_p50_ms'])} ms per request; "
         f"serving overhead {_ms(o['triton_overhead_ms'])} ms = {o['triton_overhead_over_graph']}x the graph's time "
         "(HTTP, the ensemble's two model hops, the Python backend's shared-memory transfers)."
         if o.get("triton_unbatched_p50_ms") is not None else f"Triton: {report.get('triton')}."),
        "",
        f"Machine: {report['machine']}; Python {report['python']}, ray {report['versions'].get('ray')}, "
        f"onnxruntime {report['versions'].get('onnxruntime')}; load average before {report['load_before']}, "
        f"after {report['load_after']}. Numbers from one shared machine: compare ratios within this run.",
        "",
    ]
    path.write_text("\n".join(lines))


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="default",
                        help="bundle directory; default: the built-in shapes-world bundle (64x64 input)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="client threads per point (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=20, help="calls before each point (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="backend threads (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--images", type=int, default=16, help="distinct scenes (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="scene side in pixels (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for serving.json and serving.md")
    parser.add_argument("--triton-python", type=Path, default=Path(".venv-triton/bin/python"),
                        help="interpreter of the environment with nvidia-pytriton and textcam (default: %(default)s)")
    args = parser.parse_args()
    if not private_network():
        reexec_in_namespace()
    args.concurrency = [int(v) for v in args.concurrency.split(",")]
    load_before = os.getloadavg()
    found = measure(args)
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **found,
        "summary": summarize(found["rows"], args.concurrency, found["graph_ms"], found["graph_timing"]),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("ray", "onnxruntime", "numpy")},
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "serving.md")
    log(f"wrote {args.out / 'serving.json'} and {args.out / 'serving.md'}")
    if report["summary"]["refused"]:
        log(f"error: the overhead figures are refused: {report['summary']['refused']}")
        sys.exit(1)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
