"""M connections that LISTEN on the stability channel and drain it: ``python -m bench.listeners``.

Prints ``{"listening": M}`` once all are listening; on stdin EOF prints how many
notifications arrived and exits. Stands in for M relays (or M app servers with the seed's
in-process listener) on one PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import psycopg

from bench.common import emit, stdin_lines


async def main(dsn: str, count: int) -> None:
    received = 0

    async def drain(conn: psycopg.AsyncConnection[object]) -> None:
        nonlocal received
        async for _note in conn.notifies():
            received += 1

    conns = []
    for _ in range(count):
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute("LISTEN system_stability")
        conns.append(conn)
    tasks = [asyncio.create_task(drain(c), name=f"drain-{i}") for i, c in enumerate(conns)]
    emit({"listening": count})
    reader = await stdin_lines()
    while await reader.readline():
        pass
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await task
    for conn in conns:
        await conn.close()
    emit({"received": received})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--count", type=int, required=True)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.dsn, arguments.count))
