"""A TCP proxy for fault injection: forwards, or goes silent without closing (half-open)."""

from __future__ import annotations

import asyncio
import contextlib


class SilentProxy:
    """Forwards 127.0.0.1:<port> to a target, with these faults:

    - ``pause()`` makes every connection, old and new, silently stop forwarding (no FIN, no
      RST): what a dead peer or a dropped route looks like to both ends;
    - ``cut()`` resets every client connection but leaves its server side open and silent:
      to the server the client just went quiet, and its backend lives on, holding its locks
      (a half-open connection, as after a network cut);
    - ``close_all()`` ends every connection on both sides cleanly (the far end sees its
      client leave), and ``hold()`` keeps new connections waiting until ``release()``.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._accepting = asyncio.Event()
        self._accepting.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._abandoned: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> SilentProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for upstream in self._abandoned:
            upstream.close()
        await self._server.wait_closed()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def hold(self) -> None:
        self._accepting.clear()

    def release(self) -> None:
        self._accepting.set()

    def close_all(self) -> None:
        for client, upstream in self._connections:
            client.close()
            upstream.close()
        self._connections.clear()

    def cut(self) -> None:
        for client, upstream in self._connections:
            self._abandoned.add(upstream)  # never closed by its pipe: the server hears nothing
            client.transport.abort()
        self._connections.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accepting.wait()
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._connections.append((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink), name="proxy-pipe")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # paused: hold the bytes, close nothing
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            if sink not in self._abandoned:
                with contextlib.suppress(Exception):
                    sink.close()
