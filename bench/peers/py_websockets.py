"""Peer for the bench tool: the same protocol as sessiond's hub, minimal, on Python `websockets`.

Connect to ws://127.0.0.1:$PORT/, send {"type":"auth","access_token":...} -> {"type":"ready"};
GET /broadcast sends {"type":"logout",...} to every authenticated socket and closes it (4001);
GET /logout?user=U does the same to user U's sockets only (a token `u17-3` is user `u17`'s, any
other token its own user's).
No token verification and no database: it is the floor for "a socket and a broadcast".
"""
import asyncio
import json
import os
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve

# user -> its authenticated sockets
users = {}


def user_of(token):
    """The user a token stands for: `u17-3` -> `u17`; any other token is a user of its own."""
    user, dash, _ = token.partition("-")
    return user if token.startswith("u") and dash and user else token


async def handler(ws):
    try:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
    except (asyncio.TimeoutError, ValueError):
        await ws.close(4408)
        return
    if not isinstance(msg, dict) or msg.get("type") != "auth" or not isinstance(msg.get("access_token"), str):
        await ws.close(4401)
        return
    user = user_of(msg["access_token"])
    users.setdefault(user, set()).add(ws)
    try:
        await ws.send('{"type":"ready"}')
        await ws.wait_closed()
    finally:
        sockets = users.get(user)
        if sockets is not None:
            sockets.discard(ws)
            if not sockets:
                del users[user]


async def logout_all(sockets):
    await asyncio.gather(*(ws.close(4001, "logged out") for ws in sockets), return_exceptions=True)


def logout(connection, sockets, reason):
    broadcast(sockets, json.dumps({"type": "logout", "reason": reason, "session_id": "-", "at": "-"}))
    asyncio.get_running_loop().create_task(logout_all(sockets))
    return connection.respond(HTTPStatus.OK, json.dumps({"notified": len(sockets)}) + "\n")


def process_request(connection, request):
    url = urlsplit(request.path)
    if url.path == "/readyz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    if url.path == "/broadcast":
        sockets = [ws for group in users.values() for ws in group]
        users.clear()
        return logout(connection, sockets, "admin_logout")
    if url.path == "/logout":
        user = parse_qs(url.query).get("user", [""])[0]
        return logout(connection, list(users.pop(user, ())), "logout")
    return None


async def main():
    port = int(os.environ.get("PORT", "9002"))
    async with serve(handler, "127.0.0.1", port, process_request=process_request, compression=None, max_size=16 * 1024):
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
