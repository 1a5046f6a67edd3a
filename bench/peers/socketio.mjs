// Peer for the bench tool: the same protocol as sessiond's hub, minimal, on Socket.IO (over
// Engine.IO v4, WebSocket transport only, so no HTTP long-polling handshake).
// Connect to ws://127.0.0.1:$PORT/socket.io/?EIO=4&transport=websocket, join namespace "/",
// emit `auth` with {access_token} → the server emits `ready`;
// GET /broadcast emits `logout` with {type:"logout",…} to every authenticated socket, then
// disconnects each (Socket.IO cannot choose a close code: its own disconnect packet, then close);
// GET /logout?user=U does the same to user U's sockets only, a room per user (a token `u17-3`
// is user `u17`'s, any other token its own user's).
// No token verification and no database: it is the floor for "a socket and a broadcast" on Socket.IO.
// Siblings with the plain-WebSocket protocol: node-ws.mjs, py_websockets.py, fastwebsockets/.
import http from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT || 9003);
/** The user a token stands for: `u17-3` → `u17`; any other token is a user of its own. */
function userOf(token) {
  const dash = token.indexOf("-");
  return token.startsWith("u") && dash > 0 ? token.slice(0, dash) : token;
}

/** The idiomatic Socket.IO broadcast: to a room, the packet encoded once for all its sockets. */
function logout(room, reason) {
  const msg = { type: "logout", reason, session_id: "-", at: new Date().toISOString() };
  const n = io.sockets.adapter.rooms.get(room)?.size ?? 0;
  io.to(room).emit("logout", msg);
  io.in(room).disconnectSockets(true);
  return n;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://peer");
  if (url.pathname === "/broadcast") {
    res.end(JSON.stringify({ notified: logout("authed", "admin_logout") }));
  } else if (url.pathname === "/logout") {
    res.end(JSON.stringify({ notified: logout(`user:${url.searchParams.get("user")}`, "logout") }));
  } else if (url.pathname === "/readyz") {
    res.end("ok");
  } else {
    res.statusCode = 404;
    res.end();
  }
});
const io = new Server(server, {
  transports: ["websocket"],
  perMessageDeflate: false,
  maxHttpBufferSize: 16 * 1024,
  serveClient: false,
});
io.on("connection", (socket) => {
  const timer = setTimeout(() => socket.disconnect(true), 10_000);
  socket.once("auth", (m) => {
    clearTimeout(timer);
    if (typeof m?.access_token !== "string") {
      socket.disconnect(true);
      return;
    }
    socket.join(["authed", `user:${userOf(m.access_token)}`]);
    socket.emit("ready");
  });
});
server.listen(port, "127.0.0.1");
