"""Prometheus metrics: ``GET /metrics`` and `MetricsMiddleware`, which counts HTTP requests.

Request metrics are counted in each Granian worker with prometheus-client's multiprocess
mode: the supervisor gives Granian ``PROMETHEUS_MULTIPROC_DIR=<state>/run/metrics`` (made
empty at each start), each worker process writes its own memory-mapped file there, and a
scrape, whichever worker answers it, adds them all up. Without that variable (tests, a bare
``granian`` run) the counts are this process's own.

Everything about the model workers is read at scrape time: the scrape pings every replica
over its socket (`app.workers.protocol.Pong`), and reads the restart counts the supervisor
writes (``<run>/<kind>-<replica>.restarts``). The serving certificate's expiry is read from the
copy Granian serves (``<run>/tls-cert.pem``).

Realtime sessions (``GET /v1/realtime``, a WebSocket) are counted by `app.realtime.session`:
sessions ended by how, refusals, sessions open, and the latency of their transcripts.

Labels hold only route names (the handler's name, e.g. ``transcriptions``; ``unmatched``
for a path no route serves), status codes, worker kinds and replica numbers: never a URL,
a file name or text. Access: `Settings.metrics` (``REFLECTOR_GPU_METRICS``): ``key``
(default; the API key as for every route, which Prometheus sends with its
``authorization`` scrape setting), ``open``, or ``off`` (no route).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography import x509
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.types import Receive, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from app import tls
from app.http.middleware import HttpMiddleware, StatusRecorder
from app.settings import Settings
from app.workers.client import ping
from app.workers.protocol import Pong
from app.workers.registry import WORKERS
from app.http.auth import DOCS_PATH
from app.supervision import rundir

PREFIX = "reflector_gpu"
UNMATCHED = "unmatched"
PING_TIMEOUT_SECONDS = 2.0
# From 50 ms (health, refusals) to 6 h (REFLECTOR_GPU_MAX_AUDIO_SECONDS' default).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600)

# The text format generate_latest writes; Litestar adds the charset itself.
CONTENT_TYPE = "text/plain; version=0.0.4"

disable_created_metrics()  # no *_created series (multiprocess mode has none either)
_own = CollectorRegistry(auto_describe=True)  # this process's request metrics (not the default registry)
REQUESTS = Counter(
    f"{PREFIX}_requests", "HTTP requests answered, by route name and status code", ["route", "status"], registry=_own
)
DURATION = Histogram(
    f"{PREFIX}_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route name (seconds)",
    ["route"],
    buckets=DURATION_BUCKETS,
    registry=_own,
)
AUDIO = Counter(f"{PREFIX}_audio_seconds", "Seconds of audio processed, by route name", ["route"], registry=_own)
# Realtime sessions (app.realtime): WebSockets pass the HTTP middleware by, so they count here.
REALTIME_SESSIONS = Counter(
    f"{PREFIX}_realtime_sessions",
    "Realtime sessions ended, by how: client (closed it), idle, expired, buffer (over the audio limit), error",
    ["end"],
    registry=_own,
)
REALTIME_REFUSED = Counter(
    f"{PREFIX}_realtime_refused", "Realtime upgrades refused, by status (401, 503)", ["status"], registry=_own
)
REALTIME_OPEN = Gauge(
    f"{PREFIX}_realtime_sessions_open", "Realtime sessions open now", multiprocess_mode="livesum", registry=_own
)
REALTIME_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
REALTIME_TRANSCRIPT = Histogram(
    f"{PREFIX}_realtime_transcript_seconds",
    "From an utterance's commit (end of speech, or the client's commit) to its completed transcript (seconds)",
    buckets=REALTIME_BUCKETS,
    registry=_own,
)
REALTIME_FIRST_DELTA = Histogram(
    f"{PREFIX}_realtime_first_delta_seconds",
    "From the start of an utterance's speech being detected to its first partial text (seconds)",
    buckets=REALTIME_BUCKETS,
    registry=_own,
)


def route_label(scope: Scope) -> str:
    """The matched route's name (its path template when unnamed); ``docs`` for the API docs
    and OpenAPI schema (whose handlers Litestar names with random ids); ``options`` for the
    OPTIONS answers Litestar makes for every path; ``unmatched`` for a path no route serves."""
    handler = scope.get("route_handler")
    if handler is None:
        return UNMATCHED
    if scope.get("method") == "OPTIONS":
        return "options"
    template = scope.get("path_template") or ""
    if template == DOCS_PATH or template.startswith(DOCS_PATH + "/"):
        return "docs"
    return getattr(handler, "name", None) or template or UNMATCHED


class MetricsMiddleware(HttpMiddleware):
    """ASGI middleware (HTTP only): counts each request by route and status, its duration, and
    the audio seconds the handler reported in ``scope["state"]["audio_seconds"]``. A request
    whose client left before any answer counts as status 499."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        except asyncio.CancelledError:
            recorder.status = 499
            raise
        finally:
            route = route_label(scope)
            REQUESTS.labels(route=route, status=str(recorder.status)).inc()
            DURATION.labels(route=route).observe(time.perf_counter() - started)
            audio = (scope.get("state") or {}).get("audio_seconds")
            if audio:
                AUDIO.labels(route=route).inc(audio)


class _Families:
    """A collector yielding metric families made before the scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def worker_families(settings: Settings) -> list[Metric]:
    """Gauges and counters of every configured worker kind, from pinging each replica now."""
    up = GaugeMetricFamily(f"{PREFIX}_worker_up", "1 when the worker replica answers a ping, else 0", labels=["worker", "replica"])
    queue = GaugeMetricFamily(
        f"{PREFIX}_queue_audio_seconds",
        "Seconds of audio accepted by the worker replica and not processed yet",
        labels=["worker", "replica"],
    )
    load = GaugeMetricFamily(f"{PREFIX}_model_load_seconds", "How long loading the model took (seconds; slowest replica)", labels=["worker"])
    rtf = GaugeMetricFamily(
        f"{PREFIX}_realtime_factor",
        "Processing seconds per audio second of recent jobs (mean over replicas that ran jobs)",
        labels=["worker"],
    )
    restarts = CounterMetricFamily(f"{PREFIX}_worker_restarts", "Worker processes restarted by the supervisor", labels=["worker"])
    jobs = CounterMetricFamily(f"{PREFIX}_worker_jobs", "Jobs finished by the worker replicas (any outcome)", labels=["worker", "replica"])
    configured = [(w.kind, w.replicas(settings)) for w in WORKERS if w.configured(settings)]
    pongs = await asyncio.gather(
        *(ping(settings, kind, replica, PING_TIMEOUT_SECONDS) for kind, count in configured for replica in range(count))
    )
    answers = iter(pongs)
    restart_counts = rundir.restart_counts(settings)
    for kind, count in configured:
        replies: list[Pong] = []
        for replica in map(str, range(count)):
            pong = next(answers)
            up.add_metric([kind, replica], 0 if pong is None else 1)
            if pong is not None:
                replies.append(pong)
                queue.add_metric([kind, replica], pong.queued_seconds)
                jobs.add_metric([kind, replica], pong.jobs_done)
        loads = [p.load_seconds for p in replies if p.load_seconds is not None]
        if loads:
            load.add_metric([kind], max(loads))
        factors = [p.rtf for p in replies if p.rtf is not None]
        if factors:
            rtf.add_metric([kind], sum(factors) / len(factors))
        restarts.add_metric([kind], restart_counts.get(kind, 0))
    return [up, queue, load, rtf, restarts, jobs]


_cert_cache: dict[Path, tuple[tuple[int, int, int], float]] = {}


def certificate_family(settings: Settings) -> list[Metric]:
    """The serving certificate's notAfter as a Unix time (s); nothing when TLS is off."""
    path = rundir.serving_cert(settings)
    stamp = tls.file_stamp(path)
    if stamp is None:
        return []
    try:
        cached = _cert_cache.get(path)
        if cached is None or cached[0] != stamp:
            leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
            _cert_cache[path] = (stamp, leaf.not_valid_after_utc.timestamp())
    except (OSError, ValueError, IndexError):
        return []
    family = GaugeMetricFamily(
        f"{PREFIX}_tls_certificate_expiry_timestamp_seconds",
        "When the certificate being served expires (Unix time, seconds)",
    )
    family.add_metric([], _cert_cache[path][1])
    return [family]


def multiprocess() -> bool:
    """True when prometheus-client counts in files shared by processes (PROMETHEUS_MULTIPROC_DIR)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


async def exposition(settings: Settings) -> bytes:
    """The Prometheus text exposition of every metric, as of now."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        MultiProcessCollector(registry)  # every Granian worker's files in PROMETHEUS_MULTIPROC_DIR
    else:
        registry.register(_Families(_own.collect()))
    registry.register(_Families([*await worker_families(settings), *certificate_family(settings)]))
    return generate_latest(registry)


def routes(settings: Settings) -> list[HTTPRouteHandler]:
    """``GET /metrics`` as `settings.metrics` allows: none when ``off``; open or behind the key."""
    if settings.metrics == "off":
        return []

    @get("/metrics", name="metrics", opt={"open": settings.metrics == "open"}, include_in_schema=False)
    async def metrics_endpoint(settings: NamedDependency[Settings]) -> Response[bytes]:
        """Prometheus text format; see app/http/metrics.py."""
        return Response(await exposition(settings), media_type=CONTENT_TYPE)

    return [metrics_endpoint]
