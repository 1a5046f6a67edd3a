/**
 * sessiond.js — the browser client of sessiond.
 *
 * A plain ES module (no build step, no dependencies). It keeps the access token in memory only,
 * lets the server keep the refresh token in an `HttpOnly` `__Host-` cookie ("cookie mode"),
 * refreshes before expiry once for all tabs, and holds one WebSocket per tab so that a session
 * ended anywhere (another device, an admin, reuse detection) is known here at once.
 *
 * ```js
 * import { createClient } from "/static/sessiond.js";
 * const client = createClient({
 *   onLogout: (reason) => showBanner(`You were signed out: ${reason}`),
 *   onChange: () => render(),
 * });
 * if (!(await client.resume())) await client.login(email, password);
 * const res = await client.fetch("/v1/me");     // Bearer added; refreshed and retried once on 401
 * ```
 *
 * Across tabs of one browser profile:
 * - The refresh cookie is shared, so there is one signed-in session per profile and origin: a
 *   login in one tab is adopted by the others, a logout in one tab signs the others out.
 * - A refresh is single-flight: it runs under the Web Lock `sessiond-refresh`, and its result
 *   is posted on the `BroadcastChannel` `sessiond`; a tab that was waiting for the lock adopts
 *   that token instead of rotating the cookie again. (Without Web Locks, the server's reuse
 *   grace window still makes racing tabs converge.)
 *
 * Server contract: docs/API.md §4 (endpoints, problem+json errors) and §5 (the socket).
 *
 * @module sessiond
 */

/** Name of the BroadcastChannel shared by the tabs of one origin. */
const CHANNEL_NAME = "sessiond";
/** Name of the Web Lock that serialises refreshes (and logins) across tabs. */
const REFRESH_LOCK = "sessiond-refresh";
/** The custom header every cookie-mode request carries (a cross-site form cannot send it). */
const CSRF_HEADER = "X-Sessiond-Csrf";
/** Refresh this long before the access token expires (at most a quarter of its lifetime). */
const REFRESH_MARGIN_MS = 30_000;
/** Up to this much random extra earliness, so tabs and devices do not refresh in lockstep. */
const REFRESH_JITTER_MS = 5_000;
/** Upgrades that fail before the socket ever opens, in a row, before `socketError` is set. */
const FAILED_UPGRADES_BEFORE_ERROR = 3;

/** Socket reconnect backoff: full jitter over base·2^attempt, capped. */
const BACKOFF_BASE_MS = 250;
const BACKOFF_CAP_MS = 10_000;
/** How long a tab that waited for another tab's refresh waits for its broadcast token. */
const BROADCAST_WAIT_MS = 100;
/** A token another tab got meanwhile is used instead of refreshing if it lives at least this long. */
const ADOPT_MIN_LIFE_MS = 2_000;
/**
 * Socket liveness: after this much silence the client sends a `ping`; after HEARTBEAT_DEAD_MS of
 * silence the connection is presumed lost (a dropped network often closes nothing) and replaced.
 */
const HEARTBEAT_MS = 15_000;
const HEARTBEAT_DEAD_MS = 40_000;
/** A request that takes longer is abandoned (so a hung refresh never holds the lock forever). */
const REQUEST_TIMEOUT_MS = 15_000;
/** Refresh failures that mean the session is over (rather than "try again later"). */
const SESSION_GONE = new Set(["invalid_refresh_token", "refresh_token_reused", "invalid_request"]);

/**
 * An error answered by the server (its problem+json body) or a network failure.
 * `message` (= `detail`) is a sentence meant for people; `code` is stable and meant for code.
 */
export class SessiondError extends Error {
  /**
   * @param {string} detail human-readable sentence (the problem's `detail`)
   * @param {string} code machine-readable code, e.g. `invalid_credentials`, or `network`
   * @param {number} status HTTP status, 0 for a network failure
   */
  constructor(detail, code, status) {
    super(detail);
    this.name = "SessiondError";
    /** @type {string} */
    this.detail = detail;
    /** @type {string} */
    this.code = code;
    /** @type {number} */
    this.status = status;
  }
}

/**
 * Turns a failed response into a {@link SessiondError}, using its problem+json body when it has one.
 * @param {Response} res
 * @returns {Promise<SessiondError>}
 */
export async function problemOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: fall through */
  }
  const detail = (body && (body.detail || body.title)) || `The request failed (HTTP ${res.status}).`;
  const code = (body && body.code) || "http_" + res.status;
  return new SessiondError(String(detail), String(code), res.status);
}

/** @returns {SessiondError} */
function networkError() {
  return new SessiondError("Could not reach the server. Check your connection and try again.", "network", 0);
}

/**
 * A short device name from the user agent, such as "Chrome on Linux".
 * @param {string} [ua]
 * @returns {string}
 */
export function describeUserAgent(ua = globalThis.navigator?.userAgent || "") {
  const browser = /Edg\//.test(ua)
    ? "Edge"
    : /OPR\//.test(ua)
      ? "Opera"
      : /Firefox\//.test(ua)
        ? "Firefox"
        : /(Headless)?Chrom(e|ium)\//.test(ua)
          ? "Chrome"
          : /Safari\//.test(ua)
            ? "Safari"
            : "Browser";
  const os = /Android/.test(ua)
    ? "Android"
    : /iPhone|iPad|iPod/.test(ua)
      ? "iOS"
      : /Windows/.test(ua)
        ? "Windows"
        : /Mac OS X|Macintosh/.test(ua)
          ? "macOS"
          : /CrOS/.test(ua)
            ? "ChromeOS"
            : /Linux/.test(ua)
              ? "Linux"
              : "";
  return os ? `${browser} on ${os}` : browser;
}

/** Sentences for the logout reasons of docs/API.md §5.5 (and the refresh failures). */
const REASONS = {
  logout: "This device was signed out.",
  logout_all: "All devices of this account were signed out.",
  logout_others: "This device was signed out from another device.",
  session_revoked: "This device was signed out from another device.",
  password_changed: "The password of this account was changed.",
  admin_logout: "An administrator signed this account out of all devices.",
  admin_revoked: "An administrator ended this session.",
  refresh_token_reused: "A sign-in token was used twice, which may mean it was stolen, so the session was ended.",
  session_expired: "The session expired.",
  account_disabled: "This account was disabled.",
  invalid_refresh_token: "Your session ended while this page was closed.",
};

/**
 * A sentence for people explaining a logout `reason` (the `onLogout` argument).
 * @param {string} reason
 * @returns {string}
 */
export function describeReason(reason) {
  return REASONS[reason] || "Your session has ended.";
}

/**
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl] origin of the sessiond server (default: this page's origin;
 *   cookie mode needs it to be one of the server's `--allowed-origins`)
 * @property {(reason: string, info: {source: "server"|"tab"|"resume"|"refresh"}) => void} [onLogout]
 *   called once when the session ends **other than by a call made in this tab** (`logout()`,
 *   `logoutEverywhere()`, `revokeSession(own id)` resolve instead). `reason` is the server's
 *   reason (`admin_logout`, `session_revoked`, `logout`, `refresh_token_reused`, …; docs/API.md §5.5),
 *   or the refresh error code (`invalid_refresh_token`) when a refresh found the session over.
 *   `source` says how this tab learnt it: its socket, another tab, `resume()`, or a refresh.
 * @property {() => void} [onChange] called whenever the signed-in state, the session or the
 *   socket state changes; re-render from the getters there
 * @property {string} [deviceName] the `device_name` of logins (default: e.g. "Chrome on Linux")
 */

/**
 * @typedef {object} Session  one device's session (docs/API.md §4 `Session`)
 * @property {string} id
 * @property {string|null} device_name
 * @property {string|null} user_agent
 * @property {string|null} ip
 * @property {string} created_at RFC 3339
 * @property {string} last_used_at RFC 3339
 * @property {string} expires_at RFC 3339
 * @property {boolean} current the session of this client
 * @property {boolean} connected a socket of it is open now
 */

/**
 * @typedef {"connecting"|"open"|"closed"} SocketState
 *   `open`: authenticated (the server said `ready`); `connecting`: signed in and (re)connecting,
 *   including the wait before a reconnect; `closed`: signed out, or not connecting.
 */

/**
 * Creates a client. One per page is the intended use.
 * @param {ClientOptions} [options]
 */
export function createClient({ baseUrl, onLogout, onChange, deviceName } = {}) {
  const base = String(baseUrl || globalThis.location.origin).replace(/\/+$/, "");
  const wsUrl = base.replace(/^http/, "ws") + "/v1/ws";
  const tabId = Math.random().toString(36).slice(2);

  /** Everything this tab knows about its session. The access token never leaves memory. */
  const state = {
    /** @type {string|null} */ token: null,
    /** Local clock time (ms) at which the access token expires. */
    expiresAt: 0,
    /** @type {string|null} */ sessionId: null,
    /** @type {string|null} */ userId: null,
  };
  let closed = false;
  /** Whether this client ever held a session (a later refresh failure is then not news). */
  let everSignedIn = false;
  /** Set while this tab's own logout call is running, so its own socket event is not "from elsewhere". */
  let endingHere = false;
  /** @type {Promise<boolean>|null} the refresh in flight in this tab */
  let refreshing = null;
  let refreshTimer = 0;
  let refreshFailures = 0;
  /** Callbacks for the next token broadcast by another tab. */
  let broadcastWaiters = [];

  /** @type {WebSocket|null} */
  let socket = null;
  /** @type {SocketState} */
  let socketState = "closed";
  let reconnectTimer = 0;
  let reconnectAttempt = 0;
  /** Upgrades in a row that never opened (a refused Origin looks exactly like this). */
  let failedUpgrades = 0;
  /** @type {SessiondError|null} */
  let socketError = null;
  /** Set while a 4401 close waits for its refresh; the reconnect follows it, with backoff. */
  let awaitingRefresh = false;
  /** Reason of the last `logout` event on the socket, for the 4001 that follows it. */
  let logoutReason = null;
  let heartbeatTimer = 0;
  /** When the current socket last received anything. */
  let lastHeard = 0;

  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL_NAME) : null;

  // ---- callbacks -------------------------------------------------------------------------

  function notifyChange() {
    if (closed || !onChange) return;
    try {
      onChange();
    } catch (e) {
      console.error("sessiond: onChange threw", e);
    }
  }

  function notifyLogout(reason, source) {
    if (closed || !onLogout) return;
    try {
      onLogout(reason, { source });
    } catch (e) {
      console.error("sessiond: onLogout threw", e);
    }
  }

  function post(message) {
    try {
      channel?.postMessage({ ...message, tab: tabId });
    } catch {
      /* channel closed */
    }
  }

  // ---- HTTP ------------------------------------------------------------------------------

  /**
   * `fetch` against the server with our defaults; network failures become SessiondError.
   * @param {string} path
   * @param {RequestInit} init
   * @param {boolean} [bounded] abort after REQUEST_TIMEOUT_MS (the client's own auth calls)
   */
  async function send(path, init = {}, bounded = false) {
    const url = /^https?:/.test(path) ? path : base + (path.startsWith("/") ? path : "/" + path);
    let signal = init.signal;
    if (bounded && !signal && typeof AbortSignal.timeout === "function") signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    try {
      return await globalThis.fetch(url, { credentials: "same-origin", ...init, signal });
    } catch (e) {
      if (init.signal && init.signal.aborted) throw e; // the caller's own abort
      throw networkError();
    }
  }

  /** JSON POST without a Bearer token (register, login). */
  function postJson(path, body, headers = {}) {
    return send(
      path,
      { method: "POST", headers: { "Content-Type": "application/json", ...headers }, body: JSON.stringify(body) },
      true,
    );
  }

  /** A cookie-mode request: empty body, CSRF header, cookie sent. */
  function cookieRequest(path, headers = {}) {
    return send(path, { method: "POST", headers: { [CSRF_HEADER]: "1", ...headers } }, true);
  }

  /**
   * A Bearer-authenticated JSON call; throws SessiondError unless 2xx. 204 gives `null`.
   * @param {string} method
   * @param {string} path
   * @param {object} [body]
   */
  async function api(method, path, body) {
    /** @type {RequestInit} */
    const init = { method };
    if (body !== undefined) {
      init.headers = { "Content-Type": "application/json" };
      init.body = JSON.stringify(body);
    }
    const res = await client.fetch(path, init);
    if (!res.ok) throw await problemOf(res);
    if (res.status === 204) return null;
    return res.json();
  }

  // ---- token state -----------------------------------------------------------------------

  /**
   * Takes a token response (or another tab's broadcast) as this tab's state.
   * @param {{access_token: string, expires_at: number, session_id: string, user_id: string}} t
   */
  function adopt(t) {
    const wasSignedIn = state.token !== null;
    const sessionChanged = state.sessionId !== null && state.sessionId !== t.session_id;
    state.token = t.access_token;
    state.expiresAt = t.expires_at;
    state.sessionId = t.session_id;
    state.userId = t.user_id;
    everSignedIn = true;
    refreshFailures = 0;
    scheduleRefresh();
    if (sessionChanged) {
      // The server refuses a re-`auth` for another session (4401): start a new socket.
      dropSocket();
    }
    if (socket && socket.readyState === WebSocket.OPEN) {
      sendAuth(socket); // the server answers `ready` with the new expiry
    } else if (!socket && !reconnectTimer && !awaitingRefresh) {
      connect();
    }
    if (!wasSignedIn || sessionChanged) notifyChange();
  }

  /** A TokenResponse from the server, with `expires_in` turned into a local deadline. */
  function fromResponse(body) {
    return {
      access_token: body.access_token,
      expires_at: Date.now() + Number(body.expires_in) * 1000,
      session_id: body.session_id,
      user_id: body.user_id,
    };
  }

  function clearState() {
    state.token = null;
    state.expiresAt = 0;
    state.sessionId = null;
    state.userId = null;
    clearTimeout(refreshTimer);
    refreshTimer = 0;
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    dropSocket();
    setSocketState("closed");
  }

  /**
   * The session is over: forget it, tell the other tabs (unless they told us), and the app.
   * @param {string} reason
   * @param {"self"|"server"|"tab"|"resume"|"refresh"} source
   */
  function endSession(reason, source) {
    if (state.token === null) return;
    const sessionId = state.sessionId;
    clearState();
    if (source !== "tab") post({ type: "logout", reason, session_id: sessionId });
    notifyChange();
    if (source !== "self") notifyLogout(reason, source);
  }

  /** Schedules the proactive refresh: ~30 s (at most a quarter of the lifetime) before expiry, with jitter. */
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    if (state.token === null || closed) return;
    const left = state.expiresAt - Date.now();
    const margin = Math.min(REFRESH_MARGIN_MS, left / 4);
    const jitter = Math.random() * Math.min(REFRESH_JITTER_MS, left / 20);
    const delay = Math.max(1000, left - margin - jitter);
    refreshTimer = setTimeout(proactiveRefresh, delay);
  }

  async function proactiveRefresh() {
    if (state.token === null || closed) return;
    const ok = await refresh();
    if (!ok && state.token !== null && !closed) {
      // Transient failure (network, 5xx): try again soon, sooner than the token's expiry.
      refreshFailures += 1;
      const delay = Math.min(BACKOFF_CAP_MS * 3, 1000 * 2 ** refreshFailures) * (0.5 + Math.random() / 2);
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(proactiveRefresh, delay);
    }
  }

  /**
   * Runs `fn(waited)` under the cross-tab refresh lock (directly where Web Locks are missing);
   * `waited` tells whether another tab held the lock when we asked.
   * @template T
   * @param {(waited: boolean) => Promise<T>} fn
   * @returns {Promise<T>}
   */
  async function underLock(fn) {
    const locks = globalThis.navigator?.locks;
    if (!locks || typeof locks.request !== "function") return fn(false);
    const busy = {};
    const first = await locks.request(REFRESH_LOCK, { ifAvailable: true }, (lock) => (lock ? fn(false) : busy));
    if (first !== busy) return first;
    return locks.request(REFRESH_LOCK, () => fn(true));
  }

  /** Resolves at the next token broadcast by another tab, or after `ms`. */
  function nextBroadcast(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      broadcastWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /**
   * Gets a new access token with the refresh cookie, once for all tabs.
   * @returns {Promise<boolean>} true when this tab has a fresh token afterwards
   */
  function refresh() {
    if (closed) return Promise.resolve(false);
    if (refreshing) return refreshing;
    const stale = state.token;
    refreshing = underLock((waited) => refreshLocked(stale, waited)).finally(() => {
      refreshing = null;
    });
    return refreshing;
  }

  /**
   * @param {string|null} stale the token this tab had when it decided to refresh
   * @param {boolean} waited whether another tab held the lock (and so probably just refreshed)
   */
  async function refreshLocked(stale, waited) {
    if (waited && state.token === stale) {
      // The other tab posted its token before releasing the lock, but the lock grant and the
      // channel message travel separately: give the message a moment to arrive.
      await nextBroadcast(BROADCAST_WAIT_MS);
    }
    if (closed) return false;
    if (state.token !== null && state.token !== stale && state.expiresAt - Date.now() > ADOPT_MIN_LIFE_MS) {
      return true; // another tab refreshed (or logged in) meanwhile: its token is ours
    }
    const wasSignedIn = state.token !== null;
    let res;
    try {
      res = await cookieRequest("/v1/auth/refresh");
    } catch (e) {
      client.lastError = e;
      return false;
    }
    if (res.ok) {
      let t;
      try {
        t = fromResponse(await res.json());
      } catch {
        client.lastError = networkError(); // the response was cut short
        return false;
      }
      adopt(t);
      post({ type: "token", ...t });
      return true;
    }
    const err = await problemOf(res);
    client.lastError = err;
    if ((res.status === 400 || res.status === 401) && SESSION_GONE.has(err.code)) {
      // 400: no cookie at all; 401: the cookie's session is over. Either way nothing to refresh.
      const reason = err.code === "invalid_request" ? "invalid_refresh_token" : err.code;
      if (wasSignedIn && state.token !== null) {
        endSession(reason, "refresh");
      } else if (!wasSignedIn && !everSignedIn && res.status === 401) {
        // A cookie was there, but its session ended while no tab was watching.
        notifyLogout(reason, "resume");
      }
    }
    return false;
  }

  // ---- socket ----------------------------------------------------------------------------

  /** @param {SocketState} s */
  function setSocketState(s) {
    if (socketState === s) return;
    socketState = s;
    notifyChange();
  }

  /** @param {WebSocket} ws */
  function sendAuth(ws) {
    if (state.token === null) return;
    try {
      ws.send(JSON.stringify({ type: "auth", access_token: state.token }));
    } catch {
      /* closing; onclose handles it */
    }
  }

  /** Closes the current socket without reacting to its close event. */
  function dropSocket() {
    const ws = socket;
    socket = null;
    clearInterval(heartbeatTimer);
    heartbeatTimer = 0;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, "client closing");
      } catch {
        /* already closed */
      }
    }
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    if (closed || state.token === null || socket) return;
    setSocketState("connecting");
    logoutReason = null;
    let ws;
    try {
      ws = new WebSocket(wsUrl);
    } catch {
      scheduleReconnect();
      return;
    }
    socket = ws;
    lastHeard = Date.now();
    heartbeatTimer = setInterval(() => heartbeat(ws), HEARTBEAT_MS);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      failedUpgrades = 0;
      if (socketError) {
        socketError = null;
        notifyChange();
      }
      sendAuth(ws);
    };
    ws.onmessage = (e) => onSocketMessage(ws, e);
    ws.onclose = (e) => {
      if (!opened && ws === socket) noteFailedUpgrade();
      onSocketClose(ws, e);
    };
  }

  /**
   * A socket closed before it opened. Browsers hide the upgrade's status, so a refused `Origin`
   * (403) looks like a network failure: after a few in a row, say what usually causes it,
   * instead of showing "Connecting…" forever.
   */
  function noteFailedUpgrade() {
    failedUpgrades += 1;
    if (failedUpgrades === FAILED_UPGRADES_BEFORE_ERROR) {
      socketError = new SessiondError(
        `The live connection to the server could not be opened (${failedUpgrades} attempts). If the server's log ` +
          `says "browser origin refused", start it with --issuer (or --allowed-origins) set to ${location.origin}.`,
        "socket_refused",
        0,
      );
      notifyChange();
    }
  }

  /** Reconnect after a random delay in [0, min(cap, base·2^attempt)) ("full jitter"). */
  function scheduleReconnect(minDelay = 0) {
    if (closed || state.token === null) return;
    setSocketState("connecting");
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** reconnectAttempt);
    reconnectAttempt += 1;
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, Math.max(minDelay, Math.random() * ceiling));
  }

  /** @param {WebSocket} ws */
  function heartbeat(ws) {
    if (ws !== socket) return;
    const silent = Date.now() - lastHeard;
    if (silent >= HEARTBEAT_DEAD_MS) {
      dropSocket(); // no close event will come from a dead connection
      scheduleReconnect();
    } else if (silent >= HEARTBEAT_MS - 1000 && ws.readyState === WebSocket.OPEN && socketState === "open") {
      try {
        ws.send(JSON.stringify({ type: "ping" })); // answered by `pong`
      } catch {
        /* closing */
      }
    }
  }

  function onSocketMessage(ws, e) {
    if (ws !== socket) return;
    lastHeard = Date.now();
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    if (msg.type === "ready") {
      reconnectAttempt = 0;
      setSocketState("open");
    } else if (msg.type === "logout") {
      logoutReason = msg.reason || "logout";
      endSession(logoutReason, endingHere ? "self" : "server");
    }
    // "pong" and "error" need nothing.
  }

  function onSocketClose(ws, e) {
    if (ws !== socket) return;
    socket = null;
    clearInterval(heartbeatTimer);
    heartbeatTimer = 0;
    if (closed || state.token === null) {
      setSocketState("closed");
      return;
    }
    if (e.code === 4001) {
      // Logged out (normally right after the `logout` event): never reconnect.
      endSession(logoutReason || "logout", endingHere ? "self" : "server");
      return;
    }
    if (e.code === 4401) {
      // Our access token is expired or unknown there: refresh, then reconnect.
      setSocketState("connecting");
      awaitingRefresh = true;
      refresh().then((ok) => {
        awaitingRefresh = false;
        if (ok) scheduleReconnect();
        else if (state.token !== null) scheduleReconnect(1000); // transient refresh failure
      });
      return;
    }
    // 1012 (server restart), 1006 (network), 1001, 4408, 4429, …: back off and retry.
    scheduleReconnect(e.code === 4429 ? BACKOFF_CAP_MS : 0);
  }

  // ---- other tabs, page lifecycle --------------------------------------------------------

  if (channel) {
    channel.onmessage = (e) => {
      const m = e.data;
      if (closed || !m || m.tab === tabId) return;
      if (m.type === "token" && typeof m.access_token === "string") {
        // Another tab refreshed or logged in: the cookie now belongs to that session.
        if (m.session_id !== state.sessionId || m.expires_at > state.expiresAt) adopt(m);
        const waiters = broadcastWaiters;
        broadcastWaiters = [];
        for (const wake of waiters) wake();
      } else if (m.type === "logout") {
        if (state.token !== null && (!m.session_id || m.session_id === state.sessionId)) {
          endSession(m.reason || "logout", "tab");
        }
      }
    };
  }

  function onWake() {
    if (closed || state.token === null) return;
    if (state.expiresAt - Date.now() < REFRESH_MARGIN_MS) proactiveRefresh();
    if (!socket) {
      // Timers were throttled while hidden or offline: reconnect now instead of waiting.
      reconnectAttempt = 0;
      connect();
    }
  }
  const onVisibility = () => {
    if (document.visibilityState === "visible") onWake();
  };
  globalThis.addEventListener?.("online", onWake);
  globalThis.document?.addEventListener("visibilitychange", onVisibility);

  // ---- the public API --------------------------------------------------------------------

  /**
   * Clears this tab's state after its own logout call, then tells the server.
   * @param {string|null} token Bearer token of the session (if any)
   */
  async function serverLogout(token) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let res = await cookieRequest("/v1/auth/logout", headers);
    if (res.status === 401 && token) {
      // Expired access token: the cookie alone identifies the session.
      res = await cookieRequest("/v1/auth/logout");
    }
    if (!res.ok && res.status !== 401) throw await problemOf(res);
  }

  const client = {
    /** The last error a background refresh met (for diagnostics); `null` at first. */
    lastError: /** @type {SessiondError|null} */ (null),

    /** @returns {boolean} whether this tab holds an access token */
    isSignedIn() {
      return state.token !== null;
    },

    /** @returns {SocketState} */
    get socketState() {
      return socketState;
    },

    /**
     * Why the socket keeps failing to open, after several upgrades in a row closed before
     * opening (a refused `Origin` is the usual cause); `null` once one opens.
     * @returns {SessiondError|null}
     */
    get socketError() {
      return socketError;
    },

    /** @returns {string|null} this tab's session id */
    get sessionId() {
      return state.sessionId;
    },

    /** @returns {string|null} the signed-in user's id */
    get userId() {
      return state.userId;
    },

    /**
     * The current access token, for calling other services that verify it against the JWKS.
     * Do not store it: ask again each time (it changes at every refresh).
     * @returns {string|null}
     */
    getAccessToken() {
      return state.token;
    },

    /**
     * Creates an account (it does not sign in).
     * @param {string} email
     * @param {string} password 8 to 1024 characters
     * @returns {Promise<{user_id: string}>}
     * @throws {SessiondError} `email_taken`, `invalid_request`, `registration_disabled`, …
     */
    async register(email, password) {
      const res = await postJson("/v1/auth/register", { email, password });
      if (!res.ok) throw await problemOf(res);
      return res.json();
    },

    /**
     * Signs in, always in cookie mode: a new session (any previous one of this tab is logged
     * out first), its refresh token in the `HttpOnly` cookie, the access token in memory. The
     * other tabs adopt the new session.
     * @param {string} email
     * @param {string} password
     * @param {string} [name] device name shown in session lists (default: the client's `deviceName`)
     * @returns {Promise<{user_id: string, session_id: string}>}
     * @throws {SessiondError} `invalid_credentials`, `rate_limited`, …
     */
    async login(email, password, name) {
      if (state.token !== null) await client.logout().catch(() => {});
      const device_name = name || deviceName || describeUserAgent();
      // Under the refresh lock: no tab rotates the old cookie while the new one is being set.
      const t = await underLock(async () => {
        const res = await postJson("/v1/auth/login", { email, password, device_name, refresh_cookie: true });
        if (!res.ok) throw await problemOf(res);
        const t = fromResponse(await res.json());
        adopt(t);
        post({ type: "token", ...t });
        return t;
      });
      return { user_id: t.user_id, session_id: t.session_id };
    },

    /**
     * Called once on page load: gets an access token with the refresh cookie if there is a
     * live session. When the cookie's session ended while the page was closed, `onLogout` is
     * called with the reason (`invalid_refresh_token` or `refresh_token_reused`); with no cookie
     * (a first visit, or after signing out) it resolves `false` and calls nothing. Rejects with a
     * `SessiondError` (status 403) when the server refuses this page's origin.
     * @returns {Promise<boolean>} whether the tab is signed in
     */
    async resume() {
      if (state.token !== null) return true;
      const ok = await refresh();
      const err = client.lastError;
      if (!ok && err && err.status === 403) {
        // The server refuses this page's Origin: every cookie request and the socket will fail.
        throw new SessiondError(
          `The server refused this page's origin (${location.origin}): start it with --issuer (or ` +
            `--allowed-origins) set to this origin. (${err.detail})`,
          err.code,
          403,
        );
      }
      return ok;
    },

    /**
     * Refreshes now (normally automatic: before expiry, and on a 401). Single-flight across tabs.
     * @returns {Promise<boolean>} whether this tab has a fresh token
     */
    refresh,

    /**
     * `fetch` with the Bearer token added and `credentials: "same-origin"`. On a 401 it
     * refreshes once and retries once (so `init.body` must be re-sendable: a string, Blob,
     * FormData…, not a stream). Resolves to the Response (check `res.ok`; build an error with
     * {@link problemOf}); rejects with a SessiondError (`network`) when offline.
     * @param {string} path path on the server (`/v1/me`) or absolute URL
     * @param {RequestInit} [init]
     * @returns {Promise<Response>}
     */
    async fetch(path, init = {}) {
      if (state.token === null && !closed) await refresh();
      const attempt = (token) => {
        const headers = new Headers(init.headers || {});
        if (token) headers.set("Authorization", "Bearer " + token);
        return send(path, { ...init, headers });
      };
      const used = state.token;
      const res = await attempt(used);
      if (res.status !== 401 || used === null) return res;
      const ok = await refresh();
      if (!ok || state.token === null) return res;
      return attempt(state.token);
    },

    /**
     * Signs this device out: local state is cleared at once (every tab of this browser
     * follows), then the server ends the session and deletes the cookie.
     * @returns {Promise<void>}
     * @throws {SessiondError} when the server could not be told (this tab is signed out anyway)
     */
    async logout() {
      const token = state.token;
      endSession("logout", "self");
      await serverLogout(token);
    },

    /**
     * Ends every session of this account, this one included (reason `logout_all`).
     * @returns {Promise<{revoked_sessions: number}>}
     */
    async logoutEverywhere() {
      endingHere = true;
      try {
        const out = await api("POST", "/v1/auth/logout-all", { keep_current: false });
        endSession("logout_all", "self");
        await serverLogout(null).catch(() => {}); // only deletes the now useless cookie
        return out;
      } finally {
        endingHere = false;
      }
    },

    /**
     * Ends every other session of this account; this one stays (reason `logout_others`).
     * @returns {Promise<{revoked_sessions: number}>}
     */
    logoutOthers() {
      return api("POST", "/v1/auth/logout-all", { keep_current: true });
    },

    /**
     * This account's live sessions (devices).
     * @returns {Promise<Session[]>}
     */
    async sessions() {
      const body = await api("GET", "/v1/auth/sessions");
      return body.sessions;
    },

    /**
     * Ends one of this account's sessions (reason `session_revoked`); its tabs are told at
     * once. Revoking this tab's own session is {@link logout}.
     * @param {string} id
     * @returns {Promise<void>}
     * @throws {SessiondError} `not_found` when it is not live or not this account's
     */
    async revokeSession(id) {
      if (id === state.sessionId) return client.logout();
      await api("DELETE", "/v1/auth/sessions/" + encodeURIComponent(id));
    },

    /**
     * Who the token belongs to.
     * @returns {Promise<{user_id: string, email: string, roles: string[], session_id: string}>}
     */
    me() {
      return api("GET", "/v1/me");
    },

    /**
     * Admin API (needs the `admin` role, else `forbidden`): users whose email contains `q`.
     * @param {{q?: string, limit?: number, after?: string}} [params]
     * @returns {Promise<{users: {user_id: string, email: string, roles: string[], created_at: string, active_sessions: number}[], next: string|null}>}
     */
    adminUsers({ q, limit, after } = {}) {
      const p = new URLSearchParams();
      if (q) p.set("q", q);
      if (limit) p.set("limit", String(limit));
      if (after) p.set("after", after);
      const qs = p.toString();
      return api("GET", "/v1/admin/users" + (qs ? "?" + qs : ""));
    },

    /**
     * Admin API: one user's live sessions.
     * @param {string} userId
     * @returns {Promise<Session[]>}
     */
    async adminUserSessions(userId) {
      const body = await api("GET", `/v1/admin/users/${encodeURIComponent(userId)}/sessions`);
      return body.sessions;
    },

    /**
     * Admin API: ends every session of a user (reason `admin_logout`).
     * @param {string} userId
     * @returns {Promise<{revoked_sessions: number, notified_connections: number}>}
     */
    adminLogoutUser(userId) {
      return api("POST", `/v1/admin/users/${encodeURIComponent(userId)}/logout-all`);
    },

    /**
     * Admin API: ends one session of any user (reason `admin_revoked`).
     * @param {string} sessionId
     * @returns {Promise<void>}
     */
    async adminRevokeSession(sessionId) {
      await api("DELETE", "/v1/admin/sessions/" + encodeURIComponent(sessionId));
    },

    /**
     * Stops everything (timers, socket, channel) without signing out; the client is unusable
     * afterwards. For single-page apps that unmount.
     */
    close() {
      if (closed) return;
      closed = true;
      clearState();
      channel?.close();
      globalThis.removeEventListener?.("online", onWake);
      globalThis.document?.removeEventListener("visibilitychange", onVisibility);
    },
  };

  return client;
}
