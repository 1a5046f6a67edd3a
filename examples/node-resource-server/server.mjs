// A resource server in Node that accepts sessiond's access tokens and refuses a revoked session's
// tokens at once, with no call to sessiond per request (docs/resource-servers.md).
//   ISSUER=http://127.0.0.1:8080 SERVICE_KEY=sk_… PORT=3000 [AUDIENCE=sessiond] node server.mjs
import http from "node:http";
import { createRemoteJWKSet, jwtVerify } from "jose";
import { EventSource } from "eventsource";

const { ISSUER, SERVICE_KEY, PORT = "3000", AUDIENCE = "sessiond" } = process.env;
const STALE_MS = 10_000; // fail closed when the feed has been silent this long (docs/API.md §12)
const jwks = createRemoteJWKSet(new URL("/.well-known/jwks.json", ISSUER), { cooldownDuration: 30_000 });

const revoked = new Map(); // session_id → until (ms): a revoked session's tokens die by then
// The first snapshot has arrived; when the feed last said anything (keep-alives included).
let synced = false, lastByte = 0, feed;

// The revocation feed (docs/API.md §9): a snapshot, `synced`, then live entries. EventSource
// resumes with Last-Event-ID after a disconnect; an HTTP error (400: a cursor sessiond no longer
// knows; 401, 403, 503) closes it for good, so we start over from a snapshot. The wrapped fetch
// adds the credential and notes every byte, keep-alive comments included.
function follow() {
  feed?.close();
  const es = (feed = new EventSource(new URL("/v1/revocations/stream", ISSUER), {
    fetch: async (url, init) => {
      const res = await fetch(url, { ...init, headers: { ...init.headers, Authorization: `Bearer ${SERVICE_KEY}` } });
      if (!res.ok || !res.body) return res;
      const seen = new TransformStream({ transform: (chunk, out) => ((lastByte = Date.now()), out.enqueue(chunk)) });
      return new Response(res.body.pipeThrough(seen), res);
    },
  }));
  es.addEventListener("revocation", (e) => { const r = JSON.parse(e.data); revoked.set(r.session_id, Date.parse(r.until)); });
  es.addEventListener("synced", () => (synced = true));
  es.addEventListener("error", (e) => es.readyState === es.CLOSED && (console.error(e.message), setTimeout(follow, 2000)));
}
follow();
setInterval(() => {
  revoked.forEach((until, sid) => until < Date.now() && revoked.delete(sid)); // useless past `until`
  if (feed.readyState === feed.OPEN && Date.now() - lastByte > STALE_MS) follow(); // silent: reconnect
}, 5_000).unref();

const live = () => synced && Date.now() - lastByte < STALE_MS;

// sessiond's own problem+json bodies (docs/API.md §2).
const TITLES = { 401: "Unauthorized", 503: "Service Unavailable" };
const DETAILS = {
  invalid_token: "The access token is not valid.",
  token_expired: "The access token has expired; refresh it.",
  session_revoked: "The session of this token has ended; sign in again.",
  unavailable: "A dependency is unavailable; retry shortly.",
};
function problem(res, status, code, headers = {}, detail = DETAILS[code]) {
  const body = { type: `urn:sessiond:problem:${code}`, title: TITLES[status], status, detail, code };
  res.writeHead(status, { "content-type": "application/problem+json", ...headers }).end(JSON.stringify(body));
}

async function notes(req, res) {
  if (!live()) return problem(res, 503, "unavailable", { "retry-after": "1" }); // fail closed
  const token = /^Bearer (.+)$/i.exec(req.headers.authorization || "")?.[1];
  if (!token) {
    return problem(res, 401, "invalid_token", { "www-authenticate": "Bearer" }, "This endpoint needs a Bearer access token.");
  }
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(token, jwks, {
      issuer: ISSUER, audience: AUDIENCE, algorithms: ["EdDSA"], typ: "at+jwt", clockTolerance: 30,
    }));
  } catch (e) {
    const code = e.code === "ERR_JWT_EXPIRED" ? "token_expired" : "invalid_token";
    return problem(res, 401, code, { "www-authenticate": 'Bearer error="invalid_token"' });
  }
  if ((revoked.get(claims.sid) ?? 0) >= Date.now()) {
    return problem(res, 401, "session_revoked", { "www-authenticate": 'Bearer error="invalid_token"' });
  }
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ user_id: claims.sub, session_id: claims.sid, notes: [] }));
}

http
  .createServer((req, res) => {
    if (req.url === "/notes") return notes(req, res);
    if (req.url === "/readyz") return res.writeHead(live() ? 200 : 503).end();
    res.writeHead(404).end();
  })
  .listen(Number(PORT), "127.0.0.1", () => console.log(`notes on http://127.0.0.1:${PORT}`));
