"""The Ray side of tests/test_ray_serve.py, run inside a private network namespace (loopback only).

Ray binds to the machine's real address even when told 127.0.0.1, so the test starts this script
as ``unshare -n sh -c 'ip link set lo up && exec python ray_serve_child.py MODE ...'``; the HTTP
clients run here too (they must share the namespace). It prints one JSON object on its last
stdout line; the test compares it against an in-process ``Explainer``.

Modes:

- ``server IMAGES_DIR PORT``: Ray with 2 CPUs, the default bundle on 2 replicas; the answers for
  every image in IMAGES_DIR, the refusals, health/info/selftest, a concurrent load and a replica
  killed under load;
- ``cli PORT``: ``textcam serve default --duration`` as a subprocess; one request, then it must
  stop by itself.

Every duration and wait here is a number of units of the test's measured unit (tests/child_watch.py),
so a slower machine gets proportionally longer ones; a ``progress:`` line after each step lets the
test wait as long as the child makes progress, and a stalled child's stacks and logs reach the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from child_watch import child_deadline_s, child_log_dir, child_started, progress, wait_for

# in units (tests/child_watch.py: ~1-1.5 s on the 2 shared cores these were tuned on)
LOAD_UNITS = 4.0  # the load's length
FAULT_UNITS = 8.0  # the load during which a replica is killed, KILL_AFTER_UNITS into it
KILL_AFTER_UNITS = 2.0
RETRY_WAIT_UNITS = 0.1  # a retried request waits attempt x this (8 tries: ~3.6 units in all)
REQUEST_UNITS = 30.0  # one HTTP call (~0.1 s here)
RECOVERY_UNITS = 90.0  # Serve replacing a killed replica (3-30 units here: Serve's own health-check periods)
CLI_READY_UNITS = 180.0  # `textcam serve` printing its URL, Ray and 1 replica started: 13-16 units here, 60
# with both cores busy; it is silent meanwhile: below the test's stall limit, 200
CLI_DURATION_UNITS = 6.0  # its --duration: the 2 requests are made in it
CLI_STOP_UNITS = 30.0  # its stop after --duration (~2 units here)
LOAD_THREADS = 8
RETRIES = 8
BODY_LIMIT = 1_000_000


def request(url: str, data: bytes | None = None, content_type: str | None = None, method: str | None = None,
            timeout: float | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one HTTP call; 4xx/5xx answers are returned, not raised."""
    headers = {"Content-Type": content_type} if content_type else {}
    call = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=timeout or child_deadline_s(REQUEST_UNITS)) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"raw": body.decode("utf-8", "replace")[:300]}
        return exc.code, parsed, dict(exc.headers)


def content_type(path: Path) -> str:
    return "image/png" if path.suffix == ".png" else "image/jpeg"


def short(answer: dict) -> dict:
    """The fields the load and fault phases check (heatmaps are checked in the answers phase)."""
    return {"label": answer["label"], "class_index": answer["class_index"], "score": answer["score"],
            "phrases": [c["phrase"] for c in answer["concepts"]]}


class Load:
    """``threads`` clients posting the images in turn for ``seconds``; connection errors and 5xx are
    retried (at most ``RETRIES`` times per request), so a request is lost only when every try failed."""

    def __init__(self, url: str, images: list[Path], threads: int, seconds: float):
        self.url, self.images, self.threads, self.seconds = url, images, threads, seconds
        self.bodies = [p.read_bytes() for p in images]
        self.lock = threading.Lock()
        self.answers: dict[str, list[dict]] = {p.name: [] for p in images}
        self.count = self.lost = self.retries = 0
        self.errors: list[str] = []
        self.replicas: dict[str, int] = {}
        self.latencies: list[float] = []

    def run(self, during=None) -> dict:
        stop_at = time.monotonic() + self.seconds
        workers = [threading.Thread(target=self._client, args=(i, stop_at)) for i in range(self.threads)]
        for worker in workers:
            worker.start()
        action = during() if during else None
        for worker in workers:
            worker.join()
        distinct = {name: [dict(t) for t in {tuple(sorted((k, json.dumps(v)) for k, v in a.items()))
                                                  for a in found}] for name, found in self.answers.items()}
        return {"count": self.count, "lost": self.lost, "retries": self.retries, "errors": self.errors[:10],
                "replicas": self.replicas, "seconds": self.seconds, "threads": self.threads, "action": action,
                "distinct": {name: [{k: json.loads(v) for k, v in a.items()} for a in found]
                             for name, found in distinct.items()},
                "p50_ms": _percentile(self.latencies, 50), "p99_ms": _percentile(self.latencies, 99)}

    def _client(self, number: int, stop_at: float) -> None:
        turn = number
        while time.monotonic() < stop_at:
            index = turn % len(self.images)
            turn += 1
            start = time.perf_counter()
            for attempt in range(RETRIES + 1):
                try:
                    status, body, headers = request(f"{self.url}/explain", self.bodies[index],
                                                    content_type(self.images[index]))
                except OSError as exc:  # connection refused or reset while a replica goes away
                    status, body, headers = 0, {"error": f"{type(exc).__name__}: {exc}"}, {}
                if status == 200:
                    break
                with self.lock:
                    self.retries += 1
                    self.errors.append(f"{status} {body.get('error', body)}"[:200])
                time.sleep(child_deadline_s(RETRY_WAIT_UNITS) * (attempt + 1))
            elapsed = (time.perf_counter() - start) * 1000
            with self.lock:
                self.count += 1
                if status != 200:
                    self.lost += 1
                    continue
                self.latencies.append(elapsed)
                self.answers[self.images[index].name].append(short(body))
                replica = headers.get("x-textcam-replica") or headers.get("X-Textcam-Replica") or "?"
                self.replicas[replica] = self.replicas.get(replica, 0) + 1


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 2)


def replica_actors() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::"))


def running_replicas() -> int:
    from ray import serve

    from textcam.serving.ray_app import APP_NAME, DEPLOYMENT_NAME

    status = serve.status().applications.get(APP_NAME)
    if status is None or DEPLOYMENT_NAME not in status.deployments:
        return 0
    return int(status.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0))


def kill_one_replica() -> dict:
    """``ray.kill`` one replica actor (found by Serve's actor name), ``KILL_AFTER_UNITS`` into the load."""
    import ray

    kill_after = child_deadline_s(KILL_AFTER_UNITS)
    time.sleep(kill_after)
    names = replica_actors()
    victim = names[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed_at = time.monotonic()
    progress("fault: replica killed")
    # Serve's controller notices the dead actor and starts a replacement: time it from the kill
    while time.monotonic() - killed_at < child_deadline_s(RECOVERY_UNITS):
        if running_replicas() == 2 and victim not in replica_actors() and len(replica_actors()) == 2:
            break
        time.sleep(0.2)
    return {"killed": victim, "before": names, "at_s": round(kill_after, 2),
            "replaced_after_s": round(time.monotonic() - killed_at, 2)}


def server(images_dir: str, port: int) -> dict:
    import ray

    from textcam.serving.ray_app import serve_bundle

    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    progress("ray.init")
    url = serve_bundle("default", replicas=2, port=port, max_batch_size=8, batch_wait_ms=5.0,
                       max_body_bytes=BODY_LIMIT, threads=1)
    out: dict = {"startup_s": round(time.monotonic() - started, 2), "url": url}
    progress("serve_bundle")
    images = sorted(Path(images_dir).iterdir())

    # every image, with its full heatmap; some also for a chosen class and as a PNG map
    answers = {}
    for number, path in enumerate(images):
        query = "?heatmap=array" + (f"&class_index={number % 8}" if number % 2 else "")
        answers[path.name + query] = request(f"{url}/explain{query}", path.read_bytes(), content_type(path))[:2]
    answers[images[0].name + "?heatmap=png"] = request(f"{url}/explain?heatmap=png", images[0].read_bytes(),
                                                       "application/octet-stream")[:2]
    out["answers"] = answers
    progress("answers")

    png = images[0].read_bytes()
    refusals = {
        "text/plain": request(f"{url}/explain", png, "text/plain")[:2],
        "not an image": request(f"{url}/explain", b"this is not an image at all", "image/png")[:2],
        "empty": request(f"{url}/explain", b"", "image/png")[:2],
        "truncated": request(f"{url}/explain", png[: len(png) // 2], "image/png")[:2],
        "too large": request(f"{url}/explain", b"\0" * (BODY_LIMIT + 1), "application/octet-stream")[:2],
        "class_index=abc": request(f"{url}/explain?class_index=abc", png, "image/png")[:2],
        "class_index=99": request(f"{url}/explain?class_index=99", png, "image/png")[:2],
        "class_index=-2": request(f"{url}/explain?class_index=-2", png, "image/png")[:2],
        "heatmap=jpeg": request(f"{url}/explain?heatmap=jpeg", png, "image/png")[:2],
        "unknown path": request(f"{url}/nope")[:2],
        "GET /explain": request(f"{url}/explain")[:2],
    }
    refusals["valid after"] = request(f"{url}/explain", png, "image/png")[:2]
    out["refusals"] = refusals
    progress("refusals")

    out["health"] = request(f"{url}/health")[:2]
    infos = [request(f"{url}/info") for _ in range(12)]
    out["info"] = infos[0][:2]
    out["info_selftests"] = {body.get("replica", "?"): body.get("selftest") for _, body, _ in infos}
    selftests = [request(f"{url}/selftest")[:2] for _ in range(4)]
    out["selftest"] = selftests
    progress("health, info, selftest")

    load_images = images[:4]
    out["load"] = Load(url, load_images, LOAD_THREADS, child_deadline_s(LOAD_UNITS)).run()
    batches = {body.get("replica", "?"): body.get("batches") for _, body, _ in
               (request(f"{url}/info") for _ in range(12))}
    out["load"]["batches"] = batches
    progress("load")

    fault = Load(url, load_images, LOAD_THREADS, child_deadline_s(FAULT_UNITS)).run(during=kill_one_replica)
    progress("fault: load")
    load_ended = time.monotonic()
    while (time.monotonic() - load_ended < child_deadline_s(RECOVERY_UNITS)
           and not (running_replicas() == 2 and len(replica_actors()) == 2)):
        time.sleep(0.5)
    fault["recovered_after_load_s"] = round(time.monotonic() - load_ended, 2)
    fault["running_after"] = running_replicas()
    fault["after"] = replica_actors()
    after_infos = [request(f"{url}/info")[1] for _ in range(12)]
    fault["info_selftests_after"] = {body.get("replica", "?"): body.get("selftest") for body in after_infos}
    fault["valid_after"] = request(f"{url}/explain", png, "image/png")[:2]
    out["fault"] = fault
    out["total_s"] = round(time.monotonic() - started, 2)
    progress("fault: recovered")
    return out


def cli(port: int) -> dict:
    """``textcam serve default`` stops by itself (--duration) after answering a request. Its stdout and
    stderr go to files in the child's folder: nothing blocks on a full pipe, and the test shows them if
    this child stalls."""
    duration = child_deadline_s(CLI_DURATION_UNITS)
    command = [sys.executable, "-m", "textcam", "serve", "default", "--port", str(port), "--duration",
               f"{duration:.1f}", "--threads", "1"]
    url = f"http://127.0.0.1:{port}"
    stdout_path, stderr_path = child_log_dir() / "cli.stdout", child_log_dir() / "cli.stderr"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
    # the URL on stdout says every replica is ready (Serve's proxy answers 404/503 before that)
    wait_for(process, [stdout_path, stderr_path], "cli: starting", CLI_READY_UNITS,
             until=lambda: "\n" in stdout_path.read_text())
    first_line = stdout_path.read_text().split("\n", 1)[0].strip()
    progress("cli: url")
    health = request(f"{url}/health")[:2] if first_line == url else None
    explained = None
    if health:
        image = Path(os.environ["TEXTCAM_TEST_IMAGE"]).read_bytes()
        explained = request(f"{url}/explain", image, "image/png")[:2]
    progress("cli: requests")
    if not wait_for(process, [stdout_path, stderr_path], "cli: stopping", CLI_DURATION_UNITS + CLI_STOP_UNITS):
        process.kill()
        process.wait()
    progress("cli: stopped")
    return {"health": health, "explained": explained, "returncode": process.returncode,
            "stdout": stdout_path.read_text(), "stderr": stderr_path.read_text()}


def loopback_up() -> None:
    """Set IFF_UP on ``lo`` (what ``ip link set lo up`` does), for hosts without ``ip``; a no-op when up."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
        if not flags & iff_up:
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def main() -> None:
    child_started()
    loopback_up()
    mode = sys.argv[1]
    report_and_exit(server(sys.argv[2], int(sys.argv[3])) if mode == "server" else cli(int(sys.argv[2])))


def report_and_exit(result: dict) -> None:
    """The result as one JSON line on stdout (the test reads it), then exit at once."""
    sys.stdout.flush()
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # skip Ray's slow teardown: the namespace and its processes go with this process


if __name__ == "__main__":
    main()
