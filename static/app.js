// The demo app at `/`: sign up / sign in, who am I, this account's devices with live
// connection dots, the three kinds of sign-out, and a banner when the session is ended from
// elsewhere. Everything about tokens and sockets is in sessiond.js; this file only renders.

import { createClient, describeUserAgent, SessiondError } from "/static/sessiond.js";
import { $, ago, busy, clearMessages, el, hideBanner, showBanner, showError, showNotice } from "/static/ui.js";

/** How often the devices list is re-read while signed in. */
const DEVICES_POLL_MS = 2000;

const client = createClient({ onChange: render, onLogout: showBanner });
// For the browser console (and the browser tests): `await sessiond.me()`.
window.sessiond = client;

/** What the page shows beyond the client's own state. */
const view = { ready: false, wasSignedIn: false, devicesTimer: 0, devicesLoading: false, socketState: "closed" };

// ---- rendering -------------------------------------------------------------------------

const SOCKET_TEXT = { open: "Live", connecting: "Connecting…", closed: "Not connected" };

function render() {
  if (!view.ready) return;
  const signedIn = client.isSignedIn();
  $("loading").hidden = true;
  $("signed-in").hidden = !signedIn;
  $("signed-out").hidden = signedIn;

  const live = $("socket-state");
  live.dataset.state = client.socketState;
  $("socket-text").textContent = SOCKET_TEXT[client.socketState];
  if (client.socketError && signedIn) showError(client.socketError);
  const socketOpened = client.socketState === "open" && view.socketState !== "open";
  view.socketState = client.socketState;

  if (signedIn && !view.wasSignedIn) {
    view.wasSignedIn = true;
    hideBanner();
    loadWhoami().catch((e) => client.isSignedIn() && showError(e));
    loadDevices();
    view.devicesTimer = setInterval(loadDevices, DEVICES_POLL_MS);
  } else if (signedIn && socketOpened) {
    loadDevices(); // show this device's dot turning green without waiting for the next poll
  } else if (!signedIn && view.wasSignedIn) {
    view.wasSignedIn = false;
    clearInterval(view.devicesTimer);
    $("devices").replaceChildren();
    $("devices-count").textContent = "";
    for (const id of ["whoami-email", "whoami-session", "whoami-roles", "whoami-at"]) $(id).textContent = "…";
  }
}

async function loadWhoami() {
  const me = await client.me();
  $("whoami-email").textContent = me.email;
  $("whoami-session").textContent = me.session_id;
  $("whoami-roles").textContent = me.roles.length ? me.roles.join(", ") : "none";
  $("whoami-at").textContent = new Date().toLocaleTimeString();
}

async function loadDevices() {
  if (view.devicesLoading || !client.isSignedIn()) return;
  view.devicesLoading = true;
  try {
    const sessions = await client.sessions();
    if (client.isSignedIn()) renderDevices(sessions);
  } catch (e) {
    if (client.isSignedIn()) showError(e);
  } finally {
    view.devicesLoading = false;
  }
}

/**
 * Updates the list in place, keyed by session id, so a focused button keeps its focus across
 * the periodic refresh.
 */
function renderDevices(sessions) {
  const list = $("devices");
  const existing = new Map([...list.children].map((li) => [li.dataset.sessionId, li]));
  sessions.sort((a, b) => Number(b.current) - Number(a.current) || b.last_used_at.localeCompare(a.last_used_at));
  sessions.forEach((s, i) => {
    const li = existing.get(s.id) || createDevice(s);
    existing.delete(s.id);
    updateDevice(li, s);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  for (const li of existing.values()) li.remove();
  const n = sessions.length;
  $("devices-count").textContent = `${n} signed-in device${n === 1 ? "" : "s"}`;
}

function createDevice(s) {
  const li = el("li", "device");
  li.setAttribute("data-testid", "device");
  li.dataset.sessionId = s.id;
  const dot = el("span", "dot");
  dot.setAttribute("aria-hidden", "true");
  dot.setAttribute("data-testid", "device-dot");
  const main = el("div", "device-main");
  const title = el("p", "device-title");
  const name = el("strong", "device-name");
  const badge = el("span", "badge", "This device");
  badge.setAttribute("data-testid", "current-badge");
  title.append(name, " ", badge);
  const meta = el("p", "device-meta small muted");
  const presence = el("span", "presence");
  presence.setAttribute("data-testid", "device-presence");
  main.append(title, meta, presence);
  li.append(dot, main);
  if (!s.current) {
    const button = el("button", "secondary small-button", "Sign out");
    button.type = "button";
    button.setAttribute("data-testid", "device-signout");
    button.addEventListener("click", () =>
      busy(button, async () => {
        const label = li.querySelector(".device-name").textContent;
        await client.revokeSession(s.id);
        showNotice(`Signed out “${label}”.`);
        await loadDevices();
      }),
    );
    li.append(button);
  }
  return li;
}

function updateDevice(li, s) {
  const label = s.device_name || describeUserAgent(s.user_agent || "");
  li.dataset.current = String(s.current);
  li.dataset.connected = String(s.connected);
  li.classList.toggle("is-current", s.current);
  li.querySelector(".dot").classList.toggle("on", s.connected);
  li.querySelector(".device-name").textContent = label;
  li.querySelector(".badge").hidden = !s.current;
  const browser = describeUserAgent(s.user_agent || "");
  const parts = [browser === label ? "" : browser, s.ip, `last used ${ago(s.last_used_at)}`].filter(Boolean);
  const meta = li.querySelector(".device-meta");
  meta.textContent = parts.join(" · ");
  meta.title = `${s.user_agent || "unknown browser"}\nsigned in ${new Date(s.created_at).toLocaleString()}`;
  li.querySelector(".presence").textContent = s.connected ? "Online now" : "Not connected";
  const button = li.querySelector("button");
  if (button) button.setAttribute("aria-label", `Sign out ${label}`);
}

// ---- actions ---------------------------------------------------------------------------

function formValues(form) {
  const data = new FormData(form);
  return {
    email: String(data.get("email") || "").trim(),
    password: String(data.get("password") || ""),
    device: String(data.get("device") || "").trim(),
  };
}

function requireFields(email, password) {
  if (!email || !password) {
    showError(new SessiondError("Enter your email and password.", "invalid_request", 400));
    return false;
  }
  return true;
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const form = e.currentTarget;
  const { email, password, device } = formValues(form);
  if (!requireFields(email, password)) return;
  busy($("login-submit"), async () => {
    clearMessages();
    await client.login(email, password, device || undefined);
    form.reset();
    $("account-title").focus();
  });
});

$("register-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const form = e.currentTarget;
  const { email, password } = formValues(form);
  if (!requireFields(email, password)) return;
  if (password.length < 8) {
    showError(new SessiondError("The password needs at least 8 characters.", "invalid_request", 400));
    return;
  }
  busy($("register-submit"), async () => {
    clearMessages();
    await client.register(email, password);
    await client.login(email, password);
    form.reset();
    showNotice("Account created; you are signed in.");
    $("account-title").focus();
  });
});

$("whoami-button").addEventListener("click", (e) =>
  busy(e.currentTarget, async () => {
    clearMessages();
    await loadWhoami();
  }),
);

$("logout-button").addEventListener("click", (e) =>
  busy(e.currentTarget, async () => {
    clearMessages();
    await client.logout();
    showNotice("You signed out of this device.");
    $("signin-title").focus();
  }),
);

$("logout-others-button").addEventListener("click", (e) =>
  busy(e.currentTarget, async () => {
    clearMessages();
    const { revoked_sessions: n } = await client.logoutOthers();
    showNotice(n ? `Signed out ${n} other device${n === 1 ? "" : "s"}.` : "No other device was signed in.");
    await loadDevices();
  }),
);

$("logout-all-button").addEventListener("click", (e) =>
  busy(e.currentTarget, async () => {
    clearMessages();
    const { revoked_sessions: n } = await client.logoutEverywhere();
    showNotice(`Signed out everywhere (${n} device${n === 1 ? "" : "s"}).`);
    $("signin-title").focus();
  }),
);

$("banner-dismiss").addEventListener("click", hideBanner);

// ---- start -----------------------------------------------------------------------------

// A reload keeps the session (the cookie); a session revoked while the page was closed shows
// up here as onLogout("invalid_refresh_token").
client
  .resume()
  .catch(showError)
  .finally(() => {
    view.ready = true;
    render();
  });
