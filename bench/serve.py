"""Serving under load: N concurrent streaming clients against `picochat serve`, batching on vs off.

The benchmark starts its own server (`picochat serve`, a subprocess bound to 127.0.0.1 on a free
port), once with continuous batching and once with `--no-batching` (one request at a time: what a
server with a lock around `generate()` does), and for each N in --clients runs N clients at once.
Each client sends its requests one after another (closed loop), each a streaming
`/v1/chat/completions` with usage, and records the time to the first token and to the last.
All traffic stays on the loopback interface; the run is bounded by --requests per setting.

Every request has its own seed (the same in both modes), so both modes generate the same answers
and the comparison is over the same tokens. Throughput = completion tokens of all requests /
wall time of the setting; latency = time from sending a request to its last token (p50, p95);
TTFT = time to the first token.

    python -m bench.serve --ckpt runs/tiny/sft
    python -m bench.serve --ckpt runs/tiny/sft --clients 1 4 16 --requests 48 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import machine_info
from bench.report import emit_json, format_table

QUESTIONS = [
    "What is Hara's favourite food?", "Where does Modor live?", "What is 17 + 25?", "Tell me a story about Dana.",
    "What does Pena like to do in her free time?", "哈拉住在哪里？", "What kind of animal is Robel?",
    "Who is Amond's best friend?", "What is 8 + 9?", "莫多尔最喜欢吃什么？", "How old is Jolen?",
    "Write a short story about a green dog.", "What is Haric's job?", "What colour is Tona?",
    "What is 31 + 4?", "Tell me about Larkspur.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: str, batching: bool, threads: int, max_batch_rows: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "picochat.cli.main", "serve", "--ckpt", ckpt, "--host", "127.0.0.1",
           "--port", str(port), "--no-label", "--log-level", "error", "--max-batch-rows", str(max_batch_rows)]
    if threads:
        cmd += ["--threads", str(threads)]  # else the server picks (cores - 1)
    if not batching:
        cmd.append("--no-batching")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


async def one_request(client, url: str, model: str, question: str, seed: int, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 1.0, "seed": seed, "max_tokens": max_tokens}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if first is None and any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"latency_s": end - t0, "ttft_s": (first or end) - t0, "tokens": tokens}


async def run_clients(url: str, model: str, n_clients: int, n_requests: int, max_tokens: int) -> dict:
    import httpx

    per_client = max(1, -(-n_requests // n_clients))  # ceil
    limits = httpx.Limits(max_connections=n_clients + 4, max_keepalive_connections=n_clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def client_loop(c: int) -> list[dict]:
            out = []
            for r in range(per_client):
                i = c * per_client + r  # the same request (question, seed) in both modes
                out.append(await one_request(client, url, model, QUESTIONS[i % len(QUESTIONS)], 1000 + i,
                                             max_tokens))
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(client_loop(c) for c in range(n_clients)))
        wall = time.perf_counter() - t0
    flat = [r for rs in results for r in rs]
    latencies = sorted(r["latency_s"] for r in flat)
    tokens = sum(r["tokens"] for r in flat)
    return {"requests": len(flat), "completion_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "requests_per_s": len(flat) / wall,
            "latency_p50_ms": 1000 * percentile(latencies, 50), "latency_p95_ms": 1000 * percentile(latencies, 95),
            "ttft_p50_ms": 1000 * statistics.median(r["ttft_s"] for r in flat),
            "ttft_p95_ms": 1000 * percentile(sorted(r["ttft_s"] for r in flat), 95)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def run(args) -> dict:
    import httpx

    rows = []
    for batching in (True, False):
        proc, url = start_server(args.ckpt, batching, args.threads, args.max_batch_rows)
        try:
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            asyncio.run(run_clients(url, model, 2, 2, args.max_tokens))  # warm up
            for n in args.clients:
                before = httpx.get(url + "/health").json()
                result = asyncio.run(run_clients(url, model, n, args.requests, args.max_tokens))
                after = httpx.get(url + "/health").json()
                steps = after["decode_steps"] - before["decode_steps"]
                rows.append({"batching": "on" if batching else "off", "clients": n, **result,
                             "mean_batch_rows": (after["rows_stepped"] - before["rows_stepped"]) / max(steps, 1)})
                mode = "on " if batching else "off"
                print(f"[serve] batching {mode} N={n:2d}: {result['tokens_per_s']:7.1f} tokens/s, "
                      f"p50 {result['latency_p50_ms']:6.0f} ms, p95 {result['latency_p95_ms']:6.0f} ms", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    on = {r["clients"]: r for r in rows if r["batching"] == "on"}
    for r in rows:
        if r["batching"] == "off" and r["clients"] in on:
            on[r["clients"]]["speedup_vs_off"] = on[r["clients"]]["tokens_per_s"] / r["tokens_per_s"]
    return {"ckpt": str(args.ckpt), "max_tokens": args.max_tokens, "requests_per_setting": args.requests,
            "machine": machine_info("fastapi", "uvicorn", "httpx"), "results": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="runs/tiny/sft", help="chat model to serve (default: runs/tiny/sft)")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16], help="concurrent clients, N")
    p.add_argument("--requests", type=int, default=32, help="requests per setting (split across the clients)")
    p.add_argument("--max-tokens", type=int, default=64, help="longest answer per request")
    p.add_argument("--max-batch-rows", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="server torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if not Path(args.ckpt).exists():
        print(f"no model at {args.ckpt}: train one (`make demo`) or pass --ckpt DIR", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = run(args)
    print()
    print(format_table(result["results"], [
        ("batching", "batching"), ("clients", "N"), ("requests", "requests"), ("completion_tokens", "tokens"),
        ("tokens_per_s", "tokens/s"), ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"),
        ("ttft_p50_ms", "TTFT p50 ms"), ("mean_batch_rows", "rows/step"), ("speedup_vs_off", "x off")]))
    print(f"load average (1, 5, 15 min) at the end: {result['machine']['load_avg_1_5_15']}")
    emit_json("serve", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
