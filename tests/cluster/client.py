"""One MCP session through the cluster test's load balancer (tests/e2e/cluster_clients.rs),
driven by the official Python SDK (PyPI `mcp`): its `Client` in the session-era handshake
(`mode="legacy"`: initialize, Mcp-Session-Id) over its Streamable HTTP transport.

    python client.py <mcp-url>

The same line protocol as tests/cluster/client.cjs (read that file's header): one JSON
command a line on stdin, one JSON reply a line on stdout, each reply carrying `http`, every
HTTP request the SDK sent so far with the replica that served it (`x-served-by`).
Installed with the SDK into tests/servers/.venv by tests/servers/install.sh.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

TIMEOUT = 120.0

http: list[dict[str, Any]] = []
_entries: dict[int, tuple[httpx2.Request, dict[str, Any]]] = {}


def rpc_of(request: httpx2.Request) -> str | None:
    try:
        body = json.loads(request.content)
    except Exception:
        return None
    msgs = body if isinstance(body, list) else [body]
    return ",".join(m.get("method", "response") for m in msgs if isinstance(m, dict))


async def on_request(request: httpx2.Request) -> None:
    entry = {
        "verb": request.method,
        "rpc": rpc_of(request),
        "session": request.headers.get("mcp-session-id"),
        "status": None,
        "server": None,
    }
    http.append(entry)
    _entries[id(request)] = (request, entry)


async def on_response(response: httpx2.Response) -> None:
    found = _entries.get(id(response.request))
    if found is not None and found[0] is response.request:
        found[1]["status"] = response.status_code
        found[1]["server"] = response.headers.get("x-served-by")


def last_post() -> dict[str, Any]:
    for entry in reversed(http):
        if entry["verb"] == "POST":
            return entry
    return {}


def failure(e: BaseException) -> dict[str, Any]:
    if isinstance(e, MCPError):
        return {"ok": False, "code": e.code, "error": e.message}
    return {"ok": False, "code": None, "error": repr(e)}


def text_of(result: types.CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


class Session:
    def __init__(self, client: Client, tg: anyio.abc.TaskGroup) -> None:
        self.client = client
        self.tg = tg
        self.pending: list[tuple[int, anyio.Event, dict[str, Any]]] = []

    async def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self.client.call_tool(name, args, read_timeout_seconds=TIMEOUT)
            return {"ok": not r.is_error, "text": text_of(r)}
        except Exception as e:
            return failure(e)

    async def sequence(self, n: int) -> dict[str, Any]:
        results = []
        for _ in range(n):
            try:
                tools = await self.client.list_tools()
                results.append(
                    {
                        "op": "tools/list",
                        "ok": any(t.name == "alpha__whoami" for t in tools.tools),
                        "server": last_post().get("server"),
                    }
                )
            except Exception as e:
                results.append({"op": "tools/list", "server": last_post().get("server"), **failure(e)})
            r = await self.call("alpha__whoami", {})
            try:
                replica = json.loads(r["text"])["env"]["FIXTURE_PROBE"]
            except Exception:
                replica = None
            results.append({"op": "tools/call", "server": last_post().get("server"), "replica": replica, **r})
        return {"results": results}

    async def burst(self, n: int) -> dict[str, Any]:
        results: list[dict[str, Any]] = [{} for _ in range(n)]

        async def one(i: int) -> None:
            results[i] = await self.call("alpha__echo", {"text": f"c{i}"})

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return {"results": results}

    async def sleepers(self, n: int, ms: int) -> dict[str, Any]:
        self.pending = []
        for _ in range(n):
            done, slot = anyio.Event(), {}

            async def one(done: anyio.Event = done, slot: dict[str, Any] = slot) -> None:
                slot.update(await self.call("alpha__sleep", {"ms": ms}))
                done.set()

            self.pending.append((ms, done, slot))
            self.tg.start_soon(one)
        return {"launched": n}

    async def collect(self) -> dict[str, Any]:
        results = []
        for ms, done, slot in self.pending:
            await done.wait()
            if not slot.get("ok"):
                slot["retry"] = await self.call("alpha__sleep", {"ms": ms})
            results.append(slot)
        self.pending = []
        return {"results": results}


def reply(op: str, body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"op": op, **body, "http": http}) + "\n")
    sys.stdout.flush()


async def read_command() -> dict[str, Any] | None:
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    return json.loads(line) if line.strip() else None


async def main(url: str) -> None:
    first = await read_command()
    if first is None or first.get("op") != "connect":
        raise SystemExit("the first command must be connect")
    hooks = {"request": [on_request], "response": [on_response]}
    # A connection per request: when a replica dies under a call on a kept-alive connection,
    # HAProxy closes that connection without an answer, and the SDK (2.3) does not survive a
    # connection closed under a POST (its transport task fails and ends the whole client). On
    # a connection of its own the call gets HTTP 502, which the SDK reports as that call's error.
    limits = httpx2.Limits(max_keepalive_connections=0)
    async with httpx2.AsyncClient(
        timeout=httpx2.Timeout(30.0, read=300.0), limits=limits, event_hooks=hooks
    ) as h:
        try:
            client = Client(
                streamable_http_client(url, http_client=h),
                mode="legacy",
                cache=None,
                read_timeout_seconds=TIMEOUT,
                client_info=types.Implementation(name="portcullis-cluster-test", version="1.0.0"),
            )
            await client.__aenter__()
        except Exception as e:
            reply("connect", {"failed": repr(e)})
            return
        try:
            reply("connect", {"protocolVersion": client.protocol_version})
            async with anyio.create_task_group() as tg:
                session = Session(client, tg)
                while (cmd := await read_command()) is not None:
                    op = cmd["op"]
                    if op == "close":
                        break
                    try:
                        if op == "sequence":
                            body = await session.sequence(cmd["n"])
                        elif op == "burst":
                            body = await session.burst(cmd["n"])
                        elif op == "sleepers":
                            body = await session.sleepers(cmd["n"], cmd["ms"])
                        elif op == "collect":
                            body = await session.collect()
                        else:
                            body = {"failed": f"unknown op {op}"}
                    except Exception as e:
                        body = {"failed": repr(e)}
                    reply(op, body)
                tg.cancel_scope.cancel()
        finally:
            # Leaving the client sends the DELETE that ends the session.
            await client.__aexit__(None, None, None)
    reply("close", {})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python client.py <mcp-url>")
    anyio.run(main, sys.argv[1])
