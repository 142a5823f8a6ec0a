"""The client's HTTP exchanges against a raw asyncio server that misbehaves on purpose: keep-alive connections the
server drops, idle connections, and a server that is gone."""

from __future__ import annotations

import asyncio
import json

import pytest

from slime_entropy.rollout import client as client_module
from slime_entropy.rollout.client import EnginePool, EngineTransportError
from slime_entropy.rollout.config import EngineConfig


class _Server:
    """HTTP/1.1 on 127.0.0.1 answering every request with ``{"success": true, "n": <request number>}`` and keeping
    the connection open. ``drop_next`` makes it close the connection after reading the next request's head,
    without answering: what a keep-alive time-out that races with a new request looks like to the client."""

    def __init__(self):
        self.connections = 0
        self.requests = 0
        self.drop_next = False
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.drop_next:
                    self.drop_next = False
                    return  # closes the connection without an answer
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                await reader.readexactly(length)
                self.requests += 1
                body = json.dumps({"success": True, "n": self.requests}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _pool(address: str) -> EnginePool:
    config = EngineConfig(backend="builtin", hf_checkpoint="unused", external_engine_addrs=(address,))
    return EnginePool.from_config(config, log_dir="unused")


def test_a_request_on_a_connection_the_server_drops_is_sent_again():
    async def main():
        async with _Server() as server:
            pool = _pool(server.address)
            try:
                url = f"http://{server.address}/update_weights_from_disk"
                first = await pool._request("POST", url, {"model_path": "a"})
                assert first.success and first.body["n"] == 1 and server.connections == 1
                server.drop_next = True  # the pooled connection dies under the next request
                second = await pool._request("POST", url, {"model_path": "b"})
                assert second.success and second.body["n"] == 2
                assert server.connections == 2  # resent once, on a new connection
                server.drop_next = True
                assert (await pool._request("GET", f"http://{server.address}/health")).success
            finally:
                await pool.close()

    asyncio.run(main())


def test_idle_connections_are_closed_before_the_server_would(monkeypatch):
    monkeypatch.setattr(client_module, "_KEEPALIVE_S", 0.2)

    async def main():
        async with _Server() as server:
            pool = _pool(server.address)
            try:
                url = f"http://{server.address}/health"
                await pool._request("GET", url)
                await pool._request("GET", url)
                assert server.connections == 1  # reused while fresh
                await asyncio.sleep(1.5)
                await pool._request("GET", url)
                assert server.connections == 2  # not reused once idle past the limit
            finally:
                await pool.close()

    asyncio.run(main())


def test_a_server_that_is_gone_is_a_transport_error_not_a_retry_loop():
    async def main():
        async with _Server() as server:
            address = server.address
        pool = _pool(address)
        try:
            with pytest.raises(EngineTransportError, match="/health"):
                await pool._request("GET", f"http://{address}/health", timeout=5.0)
        finally:
            await pool.close()

    asyncio.run(main())
