"""A network link between a registry and its upstream, for the mirror workload: a TCP relay
on 127.0.0.1 that gives what passes through it a bandwidth (shared by every connection, as
one link is) and a round-trip time.

On loopback a mirror's upstream answers from the page cache with `sendfile` at several GB/s,
so a cold pull through the mirror measures how much CPU the two cores have left for the tee
(receive, hash, write, send on). A mirror's upstream is another machine: through this relay
the same pull shows what a client pays for the tee when the bytes come over a link, the
direct pull going through the same link.

    python -m bench.link --port P --target 127.0.0.1:5000 --mbps 125 --rtt-ms 10

Each chunk is delayed by half the round trip in its direction, and sent no sooner than the
link's bandwidth allows after the one before it. Runs until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CHUNK = 256 << 10


class Link:
    def __init__(self, bytes_per_s: float, one_way_s: float) -> None:
        self.rate = bytes_per_s
        self.delay = one_way_s
        self._free_at = 0.0  # when the downstream side of the link is free again

    async def _slot(self, size: int) -> None:
        """Wait for the link's bandwidth: each chunk in turn, whichever connection it is on."""
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._free_at)
        self._free_at = start + size / self.rate
        wait = self._free_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _carry(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limited: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                arrived, chunk = await queue.get()
                if not chunk:
                    break
                late = arrived + self.delay - loop.time()
                if late > 0:
                    await asyncio.sleep(late)
                if limited:
                    await self._slot(len(chunk))
                writer.write(chunk)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()

        sender = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(CHUNK):
                await queue.put((loop.time(), chunk))
                # Back-pressure: no more than a few chunks in flight per direction.
                while queue.qsize() > 16 and not sender.done():
                    await asyncio.sleep(self.delay / 4 or 0.001)
            await queue.put((loop.time(), b""))
            await sender
        finally:
            sender.cancel()

    async def serve(self, port: int, host: str, target_port: int) -> None:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(host, target_port)
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(
                    self._carry(reader, up_writer, limited=False),
                    self._carry(up_reader, writer, limited=True),
                )
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                for w in (writer, up_writer):
                    w.close()

        server = await asyncio.start_server(connection, "127.0.0.1", port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()


class LinkProcess:
    """The relay as a child process of the benchmark (its CPU is not the servers')."""

    def __init__(self, target: str, mbps: float, rtt_ms: float) -> None:
        with socket.socket() as probe:  # a free port, known before the registries start
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.target, self.mbps, self.rtt_ms = target, mbps, rtt_ms
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start_and_wait(self) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port)]
        command += ["--target", self.target, "--mbps", str(self.mbps), "--rtt-ms", str(self.rtt_ms)]
        self.proc = subprocess.Popen(command)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the link relay did not start (exit {self.proc.poll()})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--mbps", type=float, default=125.0, help="bandwidth, MB/s")
    parser.add_argument("--rtt-ms", type=float, default=10.0, help="round-trip time, ms")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    link = Link(args.mbps * 1e6, args.rtt_ms / 2000)
    asyncio.run(link.serve(args.port, host, int(port)))


if __name__ == "__main__":
    main()
