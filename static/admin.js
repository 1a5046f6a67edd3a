// The admin console at `/admin`: sign in as an admin, search users, see a user's sessions
// with live connection state (re-read every 2 s), "Log out all devices" per user (with the
// count of sockets notified) and "Revoke" per session. Token and socket handling is sessiond.js.

import { createClient, describeUserAgent, SessiondError } from "/static/sessiond.js";
import { $, ago, busy, clearMessages, el, showBanner, showError, showNotice } from "/static/ui.js";

/** How often the tables are re-read. */
const POLL_MS = 2000;
/** Search-as-you-type delay. */
const SEARCH_DEBOUNCE_MS = 250;
/** Users shown per search. */
const PAGE_SIZE = 50;

const client = createClient({
  onChange: render,
  onLogout: showBanner,
  deviceName: `Admin console (${describeUserAgent()})`,
});
window.sessiond = client;

const view = {
  ready: false,
  wasSignedIn: false,
  /** The signed-in account lacks the admin role (the API said 403). */
  forbidden: false,
  timer: 0,
  debounce: 0,
  /** Latest users request; older answers are dropped. */
  generation: 0,
  q: "",
  /** @type {{id: string, email: string}|null} */
  selected: null,
};

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** A table cell that carries its column name, shown as a label on narrow screens. */
function cell(label, className) {
  const td = el("td", className);
  td.dataset.label = label;
  return td;
}

/**
 * Updates a tbody in place, keyed by `key(item)`: rows are reused, so a focused button keeps
 * its focus across the periodic refresh.
 */
function syncRows(tbody, items, key, create, update) {
  const existing = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
  items.forEach((item, i) => {
    const k = key(item);
    const tr = existing.get(k) || create(item);
    tr.dataset.key = k;
    existing.delete(k);
    update(tr, item);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  for (const tr of existing.values()) tr.remove();
}

// ---- rendering -------------------------------------------------------------------------

const SOCKET_TEXT = { open: "Live", connecting: "Connecting…", closed: "Not connected" };

function render() {
  if (!view.ready) return;
  const signedIn = client.isSignedIn();
  $("loading").hidden = true;
  $("signed-in").hidden = !signedIn;
  $("signed-out").hidden = signedIn;
  $("console").hidden = view.forbidden;
  $("forbidden-help").hidden = !view.forbidden;
  $("socket-state").dataset.state = client.socketState;
  $("socket-text").textContent = SOCKET_TEXT[client.socketState];
  if (client.socketError && signedIn) showError(client.socketError);

  if (signedIn && !view.wasSignedIn) {
    view.wasSignedIn = true;
    $("banner").hidden = true;
    start();
  } else if (!signedIn && view.wasSignedIn) {
    view.wasSignedIn = false;
    clearInterval(view.timer);
    view.forbidden = false;
    view.selected = null;
    $("users").replaceChildren();
    $("sessions").replaceChildren();
    $("sessions-card").hidden = true;
    $("users-count").textContent = "";
    $("admin-email").textContent = "…";
  }
}

async function start() {
  try {
    const me = await client.me();
    $("admin-email").textContent = me.email;
  } catch (e) {
    if (client.isSignedIn()) showError(e);
  }
  await poll();
  clearInterval(view.timer);
  if (client.isSignedIn() && !view.forbidden) view.timer = setInterval(poll, POLL_MS);
}

/** Re-reads the users (for the current search) and the selected user's sessions. */
async function poll() {
  if (!client.isSignedIn()) return;
  await Promise.all([loadUsers(), loadSessions()]);
}

async function loadUsers() {
  const generation = ++view.generation;
  const q = view.q;
  try {
    const page = await client.adminUsers({ q, limit: PAGE_SIZE });
    if (generation !== view.generation || !client.isSignedIn()) return;
    renderUsers(page.users, page.next !== null);
  } catch (e) {
    if (!client.isSignedIn()) return;
    if (e instanceof SessiondError && e.status === 403) {
      // Signed in, but not an admin: say so with the server's own words.
      view.forbidden = true;
      clearInterval(view.timer);
      render();
    }
    showError(e);
  }
}

async function loadSessions() {
  const selected = view.selected;
  if (!selected) return;
  try {
    const sessions = await client.adminUserSessions(selected.id);
    if (view.selected !== selected || !client.isSignedIn()) return;
    renderSessions(sessions);
  } catch (e) {
    if (!client.isSignedIn()) return;
    if (e instanceof SessiondError && e.status === 404) {
      view.selected = null;
      $("sessions-card").hidden = true;
    }
    showError(e);
  }
}

function renderUsers(users, more) {
  syncRows($("users"), users, (u) => u.user_id, createUserRow, updateUserRow);
  const shown = plural(users.length, "user");
  $("users-count").textContent = more ? `first ${shown}; refine the search to see others` : shown;
}

function createUserRow(u) {
  const tr = el("tr");
  tr.setAttribute("data-testid", "user-row");
  const email = cell("Email", "user-email");
  const roles = cell("Roles", "user-roles");
  const active = cell("Active sessions", "user-active");
  active.setAttribute("data-testid", "user-active");
  const actions = cell("Actions", "actions-cell");
  const view_ = el("button", "secondary small-button", "Sessions");
  view_.type = "button";
  view_.setAttribute("data-testid", "view-sessions");
  view_.setAttribute("aria-pressed", "false");
  view_.addEventListener("click", () => selectUser(tr.dataset.key, tr.dataset.email));
  const logoutAll = el("button", "danger small-button", "Log out all devices");
  logoutAll.type = "button";
  logoutAll.setAttribute("data-testid", "logout-all");
  logoutAll.addEventListener("click", () =>
    busy(logoutAll, async () => {
      clearMessages();
      const who = tr.dataset.email;
      const r = await client.adminLogoutUser(tr.dataset.key);
      showNotice(
        `Signed out ${plural(r.revoked_sessions, "session")}, ` +
          `${plural(r.notified_connections, "socket")} notified (${who}).`,
      );
      await poll();
    }),
  );
  const buttons = el("div", "cell-actions");
  buttons.append(view_, logoutAll);
  actions.append(buttons);
  tr.append(email, roles, active, actions);
  return tr;
}

function updateUserRow(tr, u) {
  tr.dataset.email = u.email;
  tr.querySelector(".user-email").textContent = u.email;
  tr.querySelector(".user-roles").textContent = u.roles.length ? u.roles.join(", ") : "user";
  tr.querySelector(".user-active").textContent = String(u.active_sessions);
  const selected = view.selected?.id === u.user_id;
  tr.classList.toggle("is-selected", selected);
  const [viewButton, logoutAll] = tr.querySelectorAll("button");
  viewButton.setAttribute("aria-pressed", String(selected));
  viewButton.setAttribute("aria-label", `Sessions of ${u.email}`);
  logoutAll.setAttribute("aria-label", `Log out all devices of ${u.email}`);
}

function selectUser(id, email) {
  view.selected = { id, email };
  $("sessions-email").textContent = email;
  $("sessions").replaceChildren();
  $("sessions-count").textContent = "";
  $("sessions-empty").hidden = true;
  $("sessions-card").hidden = false;
  for (const tr of $("users").children) {
    const on = tr.dataset.key === id;
    tr.classList.toggle("is-selected", on);
    tr.querySelector("button").setAttribute("aria-pressed", String(on));
  }
  loadSessions();
}

function renderSessions(sessions) {
  syncRows($("sessions"), sessions, (s) => s.id, createSessionRow, updateSessionRow);
  $("sessions-empty").hidden = sessions.length > 0;
  const online = sessions.filter((s) => s.connected).length;
  $("sessions-count").textContent = `${plural(sessions.length, "session")}, ${online} connected`;
}

function createSessionRow(s) {
  const tr = el("tr");
  tr.setAttribute("data-testid", "session-row");
  tr.dataset.sessionId = s.id;
  const connected = cell("Connected", "session-connected");
  const dot = el("span", "dot");
  dot.setAttribute("aria-hidden", "true");
  dot.setAttribute("data-testid", "session-dot");
  const presence = el("span", "presence-wrap");
  presence.append(dot, el("span", "presence"));
  connected.append(presence);
  const actions = cell("Actions", "actions-cell");
  const revoke = el("button", "danger small-button", "Revoke");
  revoke.type = "button";
  revoke.setAttribute("data-testid", "revoke");
  revoke.addEventListener("click", () =>
    busy(revoke, async () => {
      clearMessages();
      const label = tr.querySelector(".session-device").textContent;
      await client.adminRevokeSession(s.id);
      showNotice(`Revoked the session “${label}”.`);
      await poll();
    }),
  );
  const buttons = el("div", "cell-actions");
  buttons.append(revoke);
  actions.append(buttons);
  tr.append(
    cell("Device", "session-device"),
    cell("IP", "session-ip"),
    cell("User agent", "session-ua"),
    cell("Last use", "session-last"),
    connected,
    actions,
  );
  return tr;
}

function updateSessionRow(tr, s) {
  const device = s.device_name || describeUserAgent(s.user_agent || "");
  tr.dataset.connected = String(s.connected);
  tr.querySelector(".session-device").textContent = device + (s.current ? " (you)" : "");
  tr.querySelector(".session-ip").textContent = s.ip || "–";
  const ua = tr.querySelector(".session-ua");
  ua.textContent = s.user_agent || "–";
  ua.title = s.user_agent || "";
  const last = tr.querySelector(".session-last");
  last.textContent = ago(s.last_used_at);
  last.title = new Date(s.last_used_at).toLocaleString();
  tr.querySelector(".dot").classList.toggle("on", s.connected);
  tr.querySelector(".presence").textContent = s.connected ? "Online" : "Offline";
  tr.querySelector("button").setAttribute("aria-label", `Revoke the session ${device}`);
}

// ---- actions ---------------------------------------------------------------------------

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const form = e.currentTarget;
  const data = new FormData(form);
  const email = String(data.get("email") || "").trim();
  const password = String(data.get("password") || "");
  if (!email || !password) {
    showError(new SessiondError("Enter your email and password.", "invalid_request", 400));
    return;
  }
  busy($("login-submit"), async () => {
    clearMessages();
    await client.login(email, password);
    form.reset();
    $("console-title").focus();
  });
});

$("logout-button").addEventListener("click", (e) =>
  busy(e.currentTarget, async () => {
    clearMessages();
    await client.logout();
    showNotice("You signed out.");
    $("signin-title").focus();
  }),
);

function search(q) {
  clearTimeout(view.debounce);
  view.q = q.trim();
  loadUsers();
}

$("search").addEventListener("input", (e) => {
  clearTimeout(view.debounce);
  const q = e.currentTarget.value;
  view.debounce = setTimeout(() => search(q), SEARCH_DEBOUNCE_MS);
});

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  search($("search").value);
});

$("banner-dismiss").addEventListener("click", () => {
  $("banner").hidden = true;
});

// ---- start -----------------------------------------------------------------------------

client
  .resume()
  .catch(showError)
  .finally(() => {
    view.ready = true;
    render();
  });
