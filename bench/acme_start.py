"""Benchmark: seconds from the service's start to its first HTTPS answer with an ACME certificate.

Starts Debian's pebble (a real ACME server, loopback; see testing/pebble.py), then the whole
service (``entrypoint.py``, ``REFLECTOR_GPU_TLS=acme``) `--runs` times with a fresh state
directory (first start: account, order, HTTP-01 validation, issuance, Granian start), and
once more on the last state directory (the stored certificate reused). Prints, per start,
the seconds until ``GET /health`` answers 200 over HTTPS verified against pebble's root,
and the median of the fresh starts against the reuse start.

Run: ``.venv/bin/python bench/acme_start.py [--runs 3]`` (about 30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.pebble import (  # noqa: E402
    acme_env,
    pebble_context,
    running_pebble,  # noqa: E402
    wait_https,
)
from testing.service import free_port, start_service  # noqa: E402
from testing.service import stop_and_remove as stop  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    http_port = free_port()
    work = Path(tempfile.mkdtemp(prefix="rg-bench-", dir="/tmp"))
    try:
        with running_pebble(http_port) as pebble:
            context = pebble_context(pebble, work)
            fresh = []
            state = None
            for run in range(args.runs):
                if state is not None:
                    shutil.rmtree(state, ignore_errors=True)
                state = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))
                service = start_service(None, wait=False, **acme_env(pebble, REFLECTOR_GPU_STATE_DIR=str(state)))
                try:
                    fresh.append(wait_https(service, context))
                finally:
                    stop(service)
                print(f"fresh start {run + 1}: first HTTPS answer after {fresh[-1]:.2f} s (ACME order included)")
            service = start_service(None, wait=False, **acme_env(pebble, REFLECTOR_GPU_STATE_DIR=str(state)))
            try:
                reuse = wait_https(service, context)
            finally:
                stop(service)
            shutil.rmtree(state, ignore_errors=True)
            print(f"restart with the stored certificate: first HTTPS answer after {reuse:.2f} s")
            median = statistics.median(fresh)
            print(f"median fresh start {median:.2f} s, reuse {reuse:.2f} s, the ACME order adds {median - reuse:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
