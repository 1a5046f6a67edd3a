// Peer for the bench tool: the same protocol as sessiond's hub, minimal, on Socket.IO (over
// Engine.IO v4, WebSocket transport only, so no HTTP long-polling handshake).
// Connect to ws://127.0.0.1:$PORT/socket.io/?EIO=4&transport=websocket, join namespace "/",
// emit `auth` with {access_token} → the server emits `ready`;
// GET /broadcast emits `logout` with {type:"logout",…} to every authenticated socket, then
// disconnects each (Socket.IO cannot choose a close code: its own disconnect packet, then close).
// No token verification and no database: it is the floor for "a socket and a broadcast" on Socket.IO.
// Siblings with the plain-WebSocket protocol: node-ws.mjs, py_websockets.py, fastwebsockets/.
import http from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT || 9003);
const server = http.createServer((req, res) => {
  if (req.url === "/broadcast") {
    const msg = { type: "logout", reason: "admin_logout", session_id: "-", at: new Date().toISOString() };
    // The idiomatic Socket.IO broadcast: one room of the authenticated sockets, the packet
    // encoded once for all of them.
    const n = io.sockets.adapter.rooms.get("authed")?.size ?? 0;
    io.to("authed").emit("logout", msg);
    io.in("authed").disconnectSockets(true);
    res.end(JSON.stringify({ notified: n }));
  } else if (req.url === "/readyz") {
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
    socket.join("authed");
    socket.emit("ready");
  });
});
server.listen(port, "127.0.0.1");
