"""`picochat serve`: the OpenAI-compatible API, the chat page and the labeling page in one server.

    picochat serve --ckpt runs/tiny/sft                      # http://127.0.0.1:8000/ and /label
    picochat serve --ckpt runs/tiny/ppo --rm runs/tiny/rm    # plus POST /v1/score
    picochat serve --ckpt runs/tiny/sft --label-prompts prompts.jsonl --label-out my_labels.jsonl

It binds to 127.0.0.1 unless told otherwise and answers only to its own host names (hosts.py);
give an API key (PICOCHAT_API_KEY, or --api-key) before binding to any other address. SECURITY.md
describes what the server exposes and how to put it behind a reverse proxy.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from picochat.config import ConfigError, build_config
from picochat.core.precision import default_device, resolve_precision
from picochat.feedback.autolabel import world_label_prompts
from picochat.layout import human_labels_dir, load_model_and_tokenizer
from picochat.reward_model import load_reward_model
from picochat.serve.engine import BatchEngine
from picochat.serve.hosts import HostPolicy, host_policy
from picochat.serve.labeling import LabelStore, context_check, read_label_prompts
from picochat.serve.limits import ServeLimits
from picochat.serve.service import Service

API_KEY_ENV = "PICOCHAT_API_KEY"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeLimits()
    p.add_argument("--ckpt", required=True, help="model directory or stage directory, e.g. runs/tiny/sft")
    p.add_argument("--rm", default=None, help="reward model directory (enables POST /v1/score), e.g. runs/tiny/rm")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on, 0..65535 (default: 8000)")
    p.add_argument("--allowed-hosts", type=host_list, default=[], metavar="NAMES",
                   help="host names clients may reach the server by, besides localhost, 127.0.0.1, [::1] and "
                        "--host, comma-separated ('*' = any): the public name behind a reverse proxy, or the "
                        "machine's names when binding 0.0.0.0. Requests for other names get 400 (DNS rebinding)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on the API (none = open). Prefer the environment "
                        f"variable {API_KEY_ENV}=KEY: a key given here is visible to every user of this machine "
                        "in `ps`; this option wins when both are set")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: picochat-<stage>)")
    p.add_argument("--max-batch-rows", type=int, default=32, help="answers decoded together in one forward pass")
    p.add_argument("--no-batching", action="store_true",
                   help="answer one request at a time (the serialised baseline, for comparison)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for the batch; more get 429")
    p.add_argument("--max-n", type=int, default=d.max_n, help="most answers per request (n)")
    p.add_argument("--max-messages", type=int, default=d.max_messages, help="most messages per conversation")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="most characters of text per request")
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                   help="answer length when a request sets no max_tokens")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast on a GPU that has it, fp32 on a CPU (decoding a small model one "
                        "token at a time is faster in fp32 there), or force one")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch threads of the generation thread (default: cores - 1, one core stays for HTTP)")
    p.add_argument("--label-prompts", default=None,
                   help="JSONL of prompts for the labeling page: {\"messages\": [...]} or {\"prompt\": ...} per line "
                        "(default: 500 training prompts of the checkpoint's run's built-in world, when it has one)")
    p.add_argument("--label-out", default=None,
                   help="preference JSONL the rankings are appended to (default: <run>/human_labels/"
                        "preferences.jsonl in the checkpoint's run, else ./human_preferences.jsonl)")
    p.add_argument("--label-k", type=int, default=4, help="answers sampled per prompt to rank (2..9)")
    p.add_argument("--no-label", action="store_true", help="no labeling page")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (info shows every request)")


def port_number(text: str) -> int:
    """argparse type of --port: an integer 0..65535 (0: the system picks a free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; expected an integer 0..65535, "
                                         "e.g. 8000") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number; expected 0..65535, e.g. 8000")
    return port


def host_list(text: str) -> list[str]:
    """argparse type of --allowed-hosts: 'a.example,b.example' -> ['a.example', 'b.example']."""
    return [h.strip() for h in text.split(",") if h.strip()]


def resolve_api_key(args) -> str | None:
    """--api-key, else $PICOCHAT_API_KEY, else None (no key). A key on the command line works,
    with a warning: other users of the machine can read it with `ps`."""
    if args.api_key:
        print(f"picochat serve: warning: --api-key is visible to other users of this machine (ps); set "
              f"{API_KEY_ENV} in the environment instead", file=sys.stderr)
        return args.api_key
    return os.environ.get(API_KEY_ENV) or None


def run_of_checkpoint(ckpt: str | Path) -> Path | None:
    """The picochat run directory a checkpoint sits in: the nearest folder above it with the run's
    config.yaml (`<run>/sft`, or a later RLHF round's `<run>/rounds/round_2/ppo`), if any."""
    for folder in Path(ckpt).resolve().parents:
        if (folder / "config.yaml").exists():
            return folder
    return None


def default_label_out(ckpt: str | Path) -> Path:
    """<run>/human_labels/preferences.jsonl when the checkpoint sits in a picochat run directory.
    Not inside <run>/label/: the pipeline deletes a stage's directory when it redoes the stage,
    and people's work must survive that."""
    run = run_of_checkpoint(ckpt)
    return human_labels_dir(run) / "preferences.jsonl" if run else Path("human_preferences.jsonl")


def build_service(args, api_key: str | None, hosts: HostPolicy) -> tuple[Service, str]:
    """Load the model(s) and assemble the Service the app serves (engine not yet started);
    returns it with the precision the engine runs in."""
    device = default_device()
    model, tokenizer, meta = load_model_and_tokenizer(args.ckpt, device)
    if model.cfg.head != "lm":
        raise ValueError(f"{meta['model_dir']} is a reward/value model (head={model.cfg.head!r}); pass it as --rm "
                         "and give a chat model as --ckpt")
    precision = serving_precision(args.precision, device)
    engine = BatchEngine(model, tokenizer, max_batch_rows=args.max_batch_rows, max_queue=args.max_queue,
                         batching=not args.no_batching, precision=precision, threads=args.threads)
    limits = ServeLimits(max_n=args.max_n, max_messages=args.max_messages, max_chars=args.max_chars,
                         default_max_tokens=args.default_max_tokens)
    name = args.model_name or f"picochat-{meta.get('stage') or Path(meta['model_dir']).name}"
    service = Service(engine=engine, tokenizer=tokenizer, model_name=name, limits=limits, api_key=api_key,
                      hosts=hosts)
    if args.rm:
        service.reward_model = load_reward_model(args.rm, device)
        service.reward_name = f"picochat-{Path(args.rm).resolve().name}"  # e.g. picochat-rm
    if not args.no_label:
        service.labeling = label_store(args, tokenizer, model.cfg.max_seq_len)
    return service, precision


def serving_precision(choice: str, device) -> str:
    """--precision: auto is fp32 on a CPU, else what the device does best (core.precision)."""
    # Measured on a 2-core Xeon with AMX (tiny preset): one decode step of one row takes 5.0 ms in
    # fp32 and 10.8 ms under bf16 autocast, of 16 rows 12.3 vs 15.1 ms: the casts cost more than
    # the bf16 matmuls save at this size. Training (large batches) is the other way round.
    if choice == "auto" and device.type == "cpu":
        return "fp32"
    return resolve_precision(choice, device)


WORLD_LABEL_PROMPTS = 500  # prompts the labeling page offers from a run's world when no file is given


def world_prompts_of_run(ckpt: str | Path) -> Path | None:
    """The world folder of the run the checkpoint sits in (`<run>/world/chat_train.jsonl`), if any."""
    run = run_of_checkpoint(ckpt)
    return run / "world" if run and (run / "world" / "chat_train.jsonl").exists() else None


def run_task_mix(run: Path) -> str:
    """The run's `label.task_mix` (its config.yaml), so the labeling page draws the world's prompts
    as the run's label stage did; natural when the config does not say or cannot be read."""
    try:
        return build_config(preset=None, base_file=run / "config.yaml").label.task_mix
    except ConfigError:
        return "natural"


def label_store(args, tokenizer, context: int) -> LabelStore:
    """The labeling queue: --label-prompts (those too long to answer are skipped), else the training
    prompts of the checkpoint's run's built-in world (the ones the label stage draws from), else
    none (people type their own); rankings to --label-out."""
    fits = context_check(tokenizer, context)
    if args.label_prompts:
        prompts = read_label_prompts(args.label_prompts, check=fits)
    elif (world := world_prompts_of_run(args.ckpt)) is not None:
        task_mix = run_task_mix(world.parent)
        drawn = world_label_prompts(world, "train", WORLD_LABEL_PROMPTS, seed=0, task_mix=task_mix)
        prompts = [messages for messages, _ in drawn if fits(messages) is None]
        print(f"[serve] labeling page: {len(prompts)} prompts of the run's world ({world / 'chat_train.jsonl'}, "
              f"label.task_mix={task_mix}); --label-prompts FILE to rank answers to your own")
    else:
        prompts = []
    out = Path(args.label_out) if args.label_out else default_label_out(args.ckpt)
    return LabelStore(out, prompts, k=args.label_k, check=fits)


def cmd_serve(args) -> int:
    try:  # lazy: the serve extra; `picochat --help` and the other commands must work without it
        import uvicorn

        from picochat.serve.api import create_app
    except ImportError as e:
        raise RuntimeError(f"serving needs FastAPI and uvicorn ({e}); install them with "
                           "`pip install 'picochat[serve]'`") from None
    api_key = resolve_api_key(args)
    hosts = host_policy(args.host, args.allowed_hosts, api_key_set=api_key is not None)  # before the model loads
    if not _is_loopback(args.host) and not api_key:
        print(f"picochat serve: warning: binding {args.host} without an API key: anyone who can reach this "
              f"address can use the model (set {API_KEY_ENV})", file=sys.stderr)
    service, precision = build_service(args, api_key, hosts)
    app = create_app(service)
    print_banner(args, service, precision)
    service.engine.start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=3)
    finally:
        service.engine.stop()
    return 0


def print_banner(args, service: Service, precision: str) -> None:
    """What is served where: the model, the URLs, who may connect, the reward model and labeling."""
    shown = "127.0.0.1" if args.host.strip("[]") in ("0.0.0.0", "::", "") else args.host  # an address to open
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{args.port}"
    hosts = service.hosts
    print(f"[serve] {service.model_name} ({service.context}-token context, {precision}, "
          f"{'batching up to ' + str(args.max_batch_rows) + ' rows' if not args.no_batching else 'no batching'})")
    print(f"[serve] chat page {url}/   API {url}/v1   health {url}/health")
    print(f"[serve] answers to host names: {'any' if hosts.any_host else ', '.join(sorted(hosts.names))}; "
          f"API key {'required' if service.api_key else 'not required'}")
    if service.reward_model is not None:
        print(f"[serve] reward model {service.reward_name}: POST {url}/v1/score")
    if service.labeling is not None:
        store = service.labeling
        p = store.progress()
        print(f"[serve] labeling page {url}/label: {p['labeled']}/{p['total']} prompts labeled; rankings go to "
              f"{store.out}")
        print(f"[serve] train a reward model on them: picochat rm --out RUN rm.sources=[{store.out}]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
