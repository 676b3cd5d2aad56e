"""What the manifest and config files add to a run's start: build, probe, write, load.

Runs each step N times against a loopback ``/v1/models`` server (http.server, in a thread)
and prints the median and max in milliseconds; writes the figures as JSON.

    python tools/bench_manifest.py [--repeat 20] [--json bench_manifest.json]
"""
from __future__ import annotations

import argparse
import http.server
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from cpbench import config, manifest
from cpbench.cli import command_parser


class _Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'{"object": "list", "data": [{"id": "m"}]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _time_ms(fn, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return {"median_ms": round(statistics.median(samples), 3), "max_ms": round(max(samples), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", default="bench_manifest.json")
    args = ap.parse_args(argv)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    trace = Path(__file__).resolve().parent.parent / "traces" / "medium.arrow"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "replay.toml"
        cfg.write_text(config.example(command_parser("replay"), "replay"))
        parser = command_parser("replay")
        server = manifest.probe_server(url)
        built = manifest.build_manifest(options={"speed": 1.0}, trace_path=trace, seed=1,
                                        target_url=url, server_info=server)
        steps = {
            "probe_server": lambda: manifest.probe_server(url),
            "build_manifest (git, sha256 of medium.arrow)": lambda: manifest.build_manifest(
                options={"speed": 1.0}, trace_path=trace, seed=1, target_url=url,
                server_info=server),
            "write_manifest": lambda: manifest.write_manifest(tmp, built),
            "record_run (all of the above)": lambda: manifest.record_run(
                tmp, options={"speed": 1.0}, trace_path=trace, target_url=url),
            "config: load + validate replay example": lambda: config.convert(
                parser, config.load_file(cfg)[0], source="bench"),
        }
        rows = {name: _time_ms(fn, args.repeat) for name, fn in steps.items()}
    httpd.shutdown()
    width = max(len(n) for n in rows)
    print(f"{'step':<{width}}  {'median ms':>10}  {'max ms':>8}   (n={args.repeat})")
    for name, r in rows.items():
        print(f"{name:<{width}}  {r['median_ms']:>10.3f}  {r['max_ms']:>8.3f}")
    Path(args.json).write_text(json.dumps({"repeat": args.repeat, "steps": rows,
                                           "trace_bytes": trace.stat().st_size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
