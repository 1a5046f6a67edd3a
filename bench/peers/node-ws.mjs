// Peer for the bench tool: the same protocol as sessiond's hub, minimal, on Node's `ws`.
// Connect to ws://127.0.0.1:$PORT/, send {"type":"auth","access_token":…} → {"type":"ready"};
// GET /broadcast sends {"type":"logout",…} to every authenticated socket and closes it (4001);
// GET /logout?user=U does the same to user U's sockets only (a token `u17-3` is user `u17`'s,
// any other token its own user's).
// No token verification and no database: it is the floor for "a socket and a broadcast".
// Siblings: socketio.mjs (Socket.IO framing), py_websockets.py, fastwebsockets/ (Rust).
import http from "node:http";
import { WebSocketServer } from "ws";

const port = Number(process.env.PORT || 9001);
/** user → its authenticated sockets */
const users = new Map();

/** The user a token stands for: `u17-3` → `u17`; any other token is a user of its own. */
function userOf(token) {
  const dash = token.indexOf("-");
  return token.startsWith("u") && dash > 0 ? token.slice(0, dash) : token;
}

function logout(sockets, reason) {
  const msg = JSON.stringify({ type: "logout", reason, session_id: "-", at: new Date().toISOString() });
  let n = 0;
  for (const ws of sockets) {
    ws.send(msg);
    ws.close(4001, "logged out");
    n++;
  }
  return n;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://peer");
  if (url.pathname === "/broadcast") {
    let n = 0;
    for (const sockets of users.values()) n += logout(sockets, "admin_logout");
    users.clear();
    res.end(JSON.stringify({ notified: n }));
  } else if (url.pathname === "/logout") {
    const user = url.searchParams.get("user");
    const n = logout(users.get(user) ?? [], "logout");
    users.delete(user);
    res.end(JSON.stringify({ notified: n }));
  } else if (url.pathname === "/readyz") {
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
    const user = userOf(m.access_token);
    if (!users.has(user)) users.set(user, new Set());
    users.get(user).add(ws);
    ws.on("close", () => {
      const sockets = users.get(user);
      if (sockets?.delete(ws) && sockets.size === 0) users.delete(user);
    });
    ws.send(JSON.stringify({ type: "ready" }));
  });
});
server.listen(port, "127.0.0.1");
