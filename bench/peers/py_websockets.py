"""Peer for the bench tool: the same protocol as sessiond's hub, minimal, on Python `websockets`.

Connect to ws://127.0.0.1:$PORT/, send {"type":"auth","access_token":...} -> {"type":"ready"};
GET /broadcast sends {"type":"logout",...} to every authenticated socket and closes it (4001).
No token verification and no database: it is the floor for "a socket and a broadcast".
"""
import asyncio
import json
import os
from http import HTTPStatus

from websockets.asyncio.server import broadcast, serve

authed = set()


async def handler(ws):
    try:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
    except (asyncio.TimeoutError, ValueError):
        await ws.close(4408)
        return
    if not isinstance(msg, dict) or msg.get("type") != "auth" or not isinstance(msg.get("access_token"), str):
        await ws.close(4401)
        return
    authed.add(ws)
    try:
        await ws.send('{"type":"ready"}')
        await ws.wait_closed()
    finally:
        authed.discard(ws)


async def logout_all(sockets):
    await asyncio.gather(*(ws.close(4001, "logged out") for ws in sockets), return_exceptions=True)


def process_request(connection, request):
    if request.path == "/readyz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    if request.path == "/broadcast":
        sockets = list(authed)
        authed.clear()
        broadcast(sockets, json.dumps({"type": "logout", "reason": "admin_logout", "session_id": "-", "at": "-"}))
        asyncio.get_running_loop().create_task(logout_all(sockets))
        return connection.respond(HTTPStatus.OK, json.dumps({"notified": len(sockets)}) + "\n")
    return None


async def main():
    port = int(os.environ.get("PORT", "9002"))
    async with serve(handler, "127.0.0.1", port, process_request=process_request, compression=None, max_size=16 * 1024):
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
