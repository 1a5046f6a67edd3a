// Peer for the bench tool: the same protocol as sessiond's hub, minimal, on Node's `ws`.
// Connect to ws://127.0.0.1:$PORT/, send {"type":"auth","access_token":…} → {"type":"ready"};
// GET /broadcast sends {"type":"logout",…} to every authenticated socket and closes it (4001).
// No token verification and no database: it is the floor for "a socket and a broadcast".
// Siblings: socketio.mjs (Socket.IO framing), py_websockets.py, fastwebsockets/ (Rust).
import http from "node:http";
import { WebSocketServer } from "ws";

const port = Number(process.env.PORT || 9001);
const authed = new Set();
const server = http.createServer((req, res) => {
  if (req.url === "/broadcast") {
    const msg = JSON.stringify({ type: "logout", reason: "admin_logout", session_id: "-", at: new Date().toISOString() });
    let n = 0;
    for (const ws of authed) {
      ws.send(msg);
      ws.close(4001, "logged out");
      n++;
    }
    authed.clear();
    res.end(JSON.stringify({ notified: n }));
  } else if (req.url === "/readyz") {
    res.end("ok");
  } else {
    res.statusCode = 404;
    res.end();
  }
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 16 * 1024 });
wss.on("connection", (ws) => {
  const timer = setTimeout(() => ws.close(4408), 10_000);
  ws.once("message", (data) => {
    clearTimeout(timer);
    let m;
    try { m = JSON.parse(data); } catch { ws.close(1008); return; }
    if (m?.type !== "auth" || typeof m.access_token !== "string") { ws.close(4401); return; }
    authed.add(ws);
    ws.on("close", () => authed.delete(ws));
    ws.send(JSON.stringify({ type: "ready" }));
  });
});
server.listen(port, "127.0.0.1");
