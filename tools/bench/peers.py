"""The peers the suite measures cpbench against: wrk (the ceiling), guidellm and aiperf.

guidellm and aiperf come from PyPI, each into its own virtual environment under
``tools/bench/.venvs/`` (never committed). Both need a Hugging Face tokenizer to build prompts
and this host reaches no hub, so :func:`make_tokenizer` writes a tiny word-level one (16 words
in, 16 out are all the bench asks for). Each ``*_command`` returns the command line for one
open-loop point; each ``*_parse`` reads that tool's own report back.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
PEERS = ("guidellm", "aiperf")
PATHS = {"chat": "/v1/chat/completions", "embedding": "/v1/embeddings"}
BODIES = {"chat": json.dumps({"model": "bench", "stream": True, "max_tokens": 16,
                              "messages": [{"role": "user", "content": "tok " * 16}]}),
          "embedding": json.dumps({"model": "bench", "input": "tok " * 16})}

# Combinations a peer cannot be driven at, and why (tried with that version; recorded, skipped).
UNSUPPORTED = {
    ("guidellm", "embedding"):
        "guidellm 0.8.1 `run` with request_format=/v1/embeddings and synthetic_text data sends "
        "no request and exits with 'Cannot compile GenerativeMetrics: No measurement start or "
        "end times available'; with --data-column-mapper kind=pooling_column_mapper it stops "
        "at 'found no matching columns'",
}

_TOKENIZER = r'''
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
out = sys.argv[1]
t = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "tok": 1, "</s>": 2}, unk_token="[UNK]"))
t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
t.decoder = decoders.WordPiece(prefix="##")
t.save(f"{out}/tokenizer.json")
json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]",
           "eos_token": "</s>", "model_max_length": 1000000},
          open(f"{out}/tokenizer_config.json", "w"))
json.dump({"model_type": "gpt2"}, open(f"{out}/config.json", "w"))
'''


def venv_python(tool: str) -> Path:
    return VENVS / tool / "bin" / "python"


def ensure_venv(tool: str) -> tuple[str | None, str | None]:
    """Install ``tool`` from PyPI into its own venv if missing; (version, None) or (None, why)."""
    py = venv_python(tool)
    if not py.exists():
        print(f"installing {tool} into {VENVS / tool} (pip) ...", file=sys.stderr, flush=True)
        VENVS.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["python3", "-m", "venv", str(VENVS / tool)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            r = subprocess.run([str(py), "-m", "pip", "install", "-q", tool],
                               capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"pip install {tool} failed: {(r.stderr or r.stdout).strip()[-300:]}"
    r = subprocess.run([str(py), "-m", "pip", "show", tool], capture_output=True, text=True)
    m = re.search(r"^Version: (\S+)", r.stdout, re.M)
    return (m.group(1), None) if m else (None, f"{tool} is not importable in its venv")


def make_tokenizer(tool: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(venv_python(tool)), "-c", _TOKENIZER, str(out)], check=True)
    return out


def guidellm_command(url: str, kind: str, rate_rps: float, count: int, tokenizer: Path,
                     out: Path, seed: int) -> list[str]:
    """guidellm ``run`` with its ``poisson`` profile at one rate, ``count`` requests."""
    backend = f"kind=openai_http,target={url},model=bench,request_format={PATHS[kind]}"
    return [str(VENVS / "guidellm" / "bin" / "guidellm"), "run", "--backend", backend,
            "--profile", f"kind=poisson,rate={rate_rps:g}",
            "--constraint", f"kind=max_requests,count={count}",
            "--data", "kind=synthetic_text,prompt_tokens=16,output_tokens=16",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
            "--seed", f"kind=static,value={seed}",
            "--output", f"kind=json,path={out / 'guidellm.json'}",
            "--disable-console-interactive"]


def guidellm_parse(out: Path) -> dict:
    b = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]["metrics"]
    lat = b["request_latency"]["successful"]
    tot = b.get("request_totals") or {}
    return {"reported_latency_p50_ms": 1e3 * lat["percentiles"]["p50"],
            "reported_latency_p99_ms": 1e3 * lat["percentiles"]["p99"],
            "reported_rps": b["requests_per_second"]["successful"]["mean"],
            "completed": tot.get("successful"), "errors": tot.get("errored")}


def aiperf_command(url: str, kind: str, rate_rps: float, count: int, tokenizer: Path,
                   out: Path, seed: int) -> list[str]:
    """aiperf ``profile`` with ``--arrival-pattern poisson`` at one rate, ``count`` requests."""
    cmd = [str(VENVS / "aiperf" / "bin" / "aiperf"), "profile", "-m", "bench", "--url", url,
           "--endpoint-type", "chat" if kind == "chat" else "embeddings",
           "--tokenizer", str(tokenizer), "--request-rate", f"{rate_rps:g}",
           "--arrival-pattern", "poisson", "--request-count", str(count),
           "--prompt-input-tokens-mean", "16", "--prompt-output-tokens-mean", "16",
           "--output-artifact-dir", str(out / "aiperf"), "--ui-type", "none",
           "--no-server-metrics", "--no-gpu-telemetry", "--random-seed", str(seed)]
    return cmd + (["--streaming"] if kind == "chat" else [])


def aiperf_parse(out: Path) -> dict:
    a = json.loads((out / "aiperf" / "profile_export_aiperf.json").read_text())
    lat = a["request_latency"]
    errors = sum(int(e.get("count", 0)) for e in a.get("error_summary") or []
                 if isinstance(e, dict))
    return {"reported_latency_p50_ms": lat["p50"], "reported_latency_p99_ms": lat["p99"],
            "reported_rps": a["request_throughput"]["avg"],
            "completed": a.get("request_count", {}).get("avg"), "errors": errors}


def wrk_command(url: str, kind: str, seconds: float, threads: int, connections: int) -> tuple[
        list[str], dict]:
    """wrk, closed loop as fast as it goes: the ceiling of this host for the endpoint."""
    env = dict(os.environ, WRK_BODY=BODIES[kind])
    return (["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
             "--latency", "-s", str(HERE / "post.lua"), url + PATHS[kind]], env)


def wrk_parse(text: str) -> dict:
    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", text, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"achieved_rps": float(rps.group(1)) if rps else None,
            "reported_latency_p50_ms": ms(*p50.groups()) if p50 else None,
            "reported_latency_p99_ms": ms(*p99.groups()) if p99 else None,
            "errors": int(non2xx.group(1)) if non2xx else 0}
