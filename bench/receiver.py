"""HTTP receivers for the benchmarks, run as their own process: ``python -m bench.receiver``.

Each ``--listen PORT:MODE[:SECONDS]`` adds a port answering every POST:

* ``ok``: ``200`` at once (the fallback fast receiver when nginx is not installed);
* ``slow``: ``200`` after SECONDS;
* ``hang``: no answer for SECONDS (far longer than the worker's ``http_timeout``), then ``200``.

A request is logged once its body is read whole and its ``X-Webhook-Signature`` checked against
the secret of the webhook the body names (``bench/signatures.py``): a delivery signed right as
``<unix time> <X-Webhook-Delivery> <port>`` in ``--log``, the format of the nginx receiver's
access log, so the harness reads both the same way; any other as ``<unix time> <delivery>
<port> <why>`` in the same path with ``.unverified`` appended (:func:`unverified_log`), and
answered 401. A request whose body never comes whole is not logged. The logs are flushed every
100 ms. The process exits on SIGTERM/SIGINT, or by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .signatures import verify


def unverified_log(log: str | Path) -> Path:
    """Where the receiver logging arrivals to ``log`` logs the requests it did not verify."""
    return Path(f"{log}.unverified")


def _parse_listen(text: str) -> tuple[int, str, float]:
    parts = text.split(":")
    port, mode = int(parts[0]), parts[1]
    seconds = float(parts[2]) if len(parts) > 2 else 0.0
    if mode not in ("ok", "slow", "hang"):
        raise argparse.ArgumentTypeError(f"unknown mode {mode!r}")
    return port, mode, seconds


async def _serve(args: argparse.Namespace) -> None:
    log = open(args.log, "a", buffering=1 << 16)  # noqa: SIM115 - closed below
    refused_log = open(unverified_log(args.log), "a")  # noqa: SIM115 - closed below
    lines: list[str] = []
    refused: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def handler(
        port: int, mode: str, seconds: float
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                body = await request.read()
            except Exception:  # the client went before its body was whole: not a delivery
                return web.Response(status=400, text="body not read")
            at = time.time()
            delivery = "".join(request.headers.get("X-Webhook-Delivery", "").split()) or "-"
            why = verify(body, request.headers.get("X-Webhook-Signature"))
            if why is not None:
                refused.append(f"{at:.6f} {delivery} {port} {why}\n")
                return web.Response(status=401, text=why)
            lines.append(f"{at:.6f} {delivery} {port}\n")
            if mode != "ok":
                await asyncio.sleep(seconds)
            return web.Response(status=200, text="OK")

        return handle

    runners = []
    for port, mode, seconds in args.listen:
        app = web.Application()
        app.router.add_post("/{tail:.*}", handler(port, mode, seconds))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        runners.append(runner)
    print("receiver ready", flush=True)

    def flush() -> None:
        for pending, out in ((lines, log), (refused, refused_log)):
            if pending:
                out.write("".join(pending))
                pending.clear()
                out.flush()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.1)
            flush()

    task = asyncio.create_task(flusher())
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except TimeoutError:
        print("receiver: --max-seconds reached, exiting", file=sys.stderr)
    task.cancel()
    flush()
    log.close()
    refused_log.close()
    for runner in runners:
        # Hanging handlers are cancelled here; bounded by aiohttp's shutdown timeout.
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--listen", type=_parse_listen, action="append", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--uvloop", action="store_true", help="use uvloop when installed")
    args = parser.parse_args()
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(_serve(args))
            return
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
