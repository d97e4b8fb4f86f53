"""Fakes that really run, for fault tests: a slow TCP proxy, an S3 client whose uploads drop, a tmpfs that
fills, and an ASGI app whose target can be swapped."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from pathlib import Path


class SlowProxy:
    """TCP proxy on loopback that holds back each response's first bytes by ``delay`` seconds."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        asked = asyncio.Event()  # a request went upstream and its answer has not started yet

        async def upstream() -> None:
            while data := await reader.read(65536):
                asked.set()
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if asked.is_set():
                    asked.clear()
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)

    def __enter__(self) -> SlowProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class FlakyS3:
    """Wraps a boto3 S3 client; ``upload_file`` fails like a dropped connection once ``fail_after`` calls of a
    kind (images or build artifacts) have gone through."""

    def __init__(self, client, *, fail_after: int, kind: str):
        self._client, self.fail_after, self.kind = client, fail_after, kind
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def upload_file(self, filename, bucket, key, *args, **kwargs):
        if f"/{self.kind}/" in key:
            with self._lock:
                self.calls += 1
                if self.calls > self.fail_after:
                    raise ConnectionResetError(f"simulated: connection dropped uploading {key}")
        return self._client.upload_file(filename, bucket, key, *args, **kwargs)


@contextlib.contextmanager
def tiny_tmpfs(path: Path):
    """A 1 MiB tmpfs at ``path`` (root only); yields a function that grows it, or None where mount fails."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class ForwardingApp:
    """ASGI app that forwards every call to ``target``, which a test may replace."""

    def __init__(self, target):
        self.target = target

    async def __call__(self, scope, receive, send):
        await self.target(scope, receive, send)
