// Browser scenarios for sessiond's demo app (/) and admin console (/admin), in headless Debian
// Chromium driven by playwright-core. Self-contained: starts the server binary ($SESSIOND_BIN)
// on a free port with a fresh SQLite database in a temp dir, runs each scenario in fresh browser
// contexts (a context = a device; a page = a tab), asserts what the pages *show*, saves a
// screenshot of each final state to target/browser-artifacts/<scenario>.png, and prints
// "ok  name" / "FAIL name: reason" per scenario and last "N passed, N failed".
//
//   cargo build && SESSIOND_BIN=$PWD/target/debug/sessiond node tests/browser/run.mjs
//
// Env: SESSIOND_BIN (default target/debug/sessiond), CHROMIUM (default /usr/bin/chromium),
// ONLY (comma list of scenario names to run).

import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const ARTIFACTS = path.join(ROOT, "target", "browser-artifacts");
const BIN = process.env.SESSIOND_BIN || path.join(ROOT, "target", "debug", "sessiond");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ONLY = (process.env.ONLY || "").split(",").filter(Boolean);

/** Bounds: one scenario, the whole run (the cargo wrapper gives up at 5 min). */
const SCENARIO_TIMEOUT_MS = 30_000;
const RESTART_SCENARIO_TIMEOUT_MS = 45_000;
const OVERALL_TIMEOUT_MS = 240_000;
/** Default wait for something to show on a page. */
const SHOW_MS = 5_000;

const ADMIN = { email: "admin@example.com", password: "admin-" + Math.random().toString(36).slice(2) };
const PASSWORD = "correct horse battery staple";
const COOKIE = "__Host-sessiond_refresh";
const DESKTOP = { viewport: { width: 1100, height: 820 } };
const PHONE = { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

// ---- small utilities ------------------------------------------------------------------------

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function freePort(host = "127.0.0.1") {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, host, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Short reason from a Playwright error (its first line, without the call log). */
function reasonOf(e) {
  const text = String((e && e.message) || e);
  return text.split("\n")[0].replace(/^(locator|page)\.\w+: /, "");
}

/** Waits for a locator to be visible; fails with `what` in the message. */
async function shows(locator, what, timeout = SHOW_MS) {
  try {
    await locator.waitFor({ state: "visible", timeout });
  } catch {
    fail(`${what}: not shown within ${timeout} ms`);
  }
}

async function gone(locator, what, timeout = SHOW_MS) {
  try {
    await locator.waitFor({ state: "hidden", timeout });
  } catch {
    fail(`${what}: still shown after ${timeout} ms`);
  }
}

/** Polls until `probe()` returns a truthy value (auto-waiting, like Playwright's expect). */
async function eventually(probe, what, timeout = SHOW_MS) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = reasonOf(e);
    }
    if (Date.now() > deadline) fail(`${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function hasText(locator, re, what, timeout = SHOW_MS) {
  return eventually(async () => re.test((await locator.textContent({ timeout: 500 })) || ""), what, timeout);
}

function equal(actual, expected, what) {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    fail(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

// ---- the server -----------------------------------------------------------------------------

class Server {
  constructor({ host, port, dir, env = {}, logName = "server.log" }) {
    this.extraEnv = env;
    this.host = host;
    this.port = port;
    this.dir = dir;
    this.base = `http://${host}:${port}`;
    /** Node's own calls go to the IP (no name resolution surprises). */
    this.direct = `http://127.0.0.1:${port}`;
    this.child = null;
    this.log = createWriteStream(path.join(ARTIFACTS, logName), { flags: "a" });
  }

  async start() {
    const env = {
      ...process.env,
      DATABASE_URL: `sqlite://${path.join(this.dir, "db.sqlite")}`,
      SESSIOND_LISTEN: `127.0.0.1:${this.port}`,
      SESSIOND_ISSUER: this.base,
      SESSIOND_ADMIN_EMAIL: ADMIN.email,
      SESSIOND_ADMIN_PASSWORD: ADMIN.password,
      SESSIOND_STATIC_DIR: path.join(ROOT, "static"),
      RUST_LOG: process.env.RUST_LOG || "warn",
      ...this.extraEnv,
    };
    const child = spawn(BIN, ["serve"], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    child.stdout.pipe(this.log, { end: false });
    child.stderr.pipe(this.log, { end: false });
    let spawnError = null;
    child.once("error", (e) => (spawnError = e));
    let exited = false;
    this.exited.then(() => (exited = true));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (spawnError) throw new Error(`cannot start ${BIN}: ${spawnError.message}`);
      if (exited) throw new Error(`the server exited at start (see ${path.join(ARTIFACTS, "server.log")})`);
      try {
        const res = await fetch(this.direct + "/readyz");
        if (res.status === 200) return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) throw new Error("the server was not ready within 30 s");
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** SIGTERM (sockets get 1012), then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs = 15_000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const done = await Promise.race([this.exited, new Promise((r) => setTimeout(() => r(null), graceMs))]);
    if (!done) {
      child.kill("SIGKILL");
      await this.exited;
    }
  }

  /** A JSON call from Node (not the browser): `{status, body}`. */
  async call(method, urlPath, { token, body, headers = {} } = {}) {
    const h = { ...headers };
    if (token) h.authorization = "Bearer " + token;
    if (body !== undefined) h["content-type"] = "application/json";
    const res = await fetch(this.direct + urlPath, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = text;
    }
    return { status: res.status, body: parsed };
  }
}

/**
 * The `__Host-` refresh cookie is `Secure`: Chromium keeps it for http://127.0.0.1 and
 * http://localhost alike (both are secure contexts), but check rather than assume.
 */
async function pickHost(browser) {
  const srv = http.createServer((req, res) => {
    res.setHeader("Set-Cookie", "__Host-probe=1; Path=/; Secure; HttpOnly; SameSite=Strict");
    res.end("probe");
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  try {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`http://127.0.0.1:${port}/`);
      const cookies = await context.cookies();
      return cookies.some((c) => c.name === "__Host-probe") ? "127.0.0.1" : "localhost";
    } finally {
      await context.close();
    }
  } finally {
    srv.close();
  }
}

// ---- page helpers ---------------------------------------------------------------------------

/** A new device (browser context) with one page, closed when the scenario ends. */
async function device(s, options = DESKTOP) {
  const context = await s.browser.newContext(options);
  s.contexts.push(context);
  const page = await context.newPage();
  watchErrors(s, page);
  context.on("page", (p) => watchErrors(s, p));
  return { context, page };
}

/** Uncaught exceptions and CSP violations fail the scenario. */
function watchErrors(s, page) {
  page.on("pageerror", (e) => s.pageErrors.push(reasonOf(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/.test(m.text())) s.pageErrors.push(m.text());
  });
}

async function waitSignedIn(page, what = "signed-in view") {
  await shows(page.getByTestId("signed-in"), what);
  await shows(page.locator('[data-testid="socket-state"][data-state="open"]'), `${what}: live socket`);
}

async function signUp(page, base, email) {
  await page.goto(base + "/");
  await shows(page.getByTestId("signed-out"), "sign-in forms");
  await page.fill("#register-email", email);
  await page.fill("#register-password", PASSWORD);
  await page.click("#register-submit");
  await waitSignedIn(page, `signed in after sign-up of ${email}`);
}

async function signIn(page, base, email, deviceName, password = PASSWORD) {
  await page.goto(base + "/");
  await shows(page.getByTestId("signed-out"), "sign-in forms");
  await page.fill("#login-email", email);
  await page.fill("#login-password", password);
  if (deviceName) await page.fill("#login-device", deviceName);
  await page.click("#login-submit");
  await waitSignedIn(page, `signed in as ${email}`);
  await hasText(page.getByTestId("whoami-email"), new RegExp(email.replace(/[.+]/g, "\\$&")), "who am I shows the email");
}

async function adminSignIn(page, base) {
  await page.goto(base + "/admin");
  await shows(page.getByTestId("signed-out"), "admin sign-in form");
  await page.fill("#login-email", ADMIN.email);
  await page.fill("#login-password", ADMIN.password);
  await page.click("#login-submit");
  await shows(page.getByTestId("console"), "admin console");
  await shows(page.getByTestId("user-row").first(), "users table rows");
}

/** Searches the admin console for one user; returns their row. */
async function adminFindUser(page, email) {
  await page.fill("#search", email);
  const rows = page.getByTestId("user-row");
  await eventually(async () => (await rows.count()) === 1, `search "${email}" shows exactly one user`);
  const row = rows.filter({ hasText: email });
  await shows(row, `row of ${email}`);
  return row;
}

/** An access token that the page's client holds now. */
function tokenOf(page) {
  return page.evaluate(() => window.sessiond.getAccessToken());
}

/** A protected call from the page with `token`: `[status, code]`. */
function meWith(page, token) {
  return page.evaluate(async (t) => {
    const r = await fetch("/v1/me", { headers: { authorization: "Bearer " + t } });
    const body = r.ok ? {} : await r.json();
    return [r.status, body.code || null];
  }, token);
}

async function refreshCookie(context) {
  const c = (await context.cookies()).find((x) => x.name === COOKIE);
  return c && c.value ? c : null;
}

// ---- scenarios ------------------------------------------------------------------------------

/** Two devices of one user; the admin presses "Log out all devices"; both show the banner. */
async function adminLogoutAll(s) {
  const { base } = s.server;
  const laptop = await device(s, DESKTOP);
  const phone = await device(s, PHONE);
  s.shot = laptop.page;
  s.extra.push(["phone", phone.page]);
  await signUp(laptop.page, base, "alice@example.com");
  await signIn(phone.page, base, "alice@example.com", "phone");

  const cookie = await refreshCookie(laptop.context);
  if (!cookie) fail(`no ${COOKIE} cookie was stored after sign-in`);
  equal([cookie.httpOnly, cookie.secure, cookie.sameSite, cookie.path], [true, true, "Strict", "/"], "cookie attributes");
  const stored = await laptop.page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }));
  if (stored.includes("eyJ")) fail("a token was found in localStorage/sessionStorage");
  const tokens = [await tokenOf(laptop.page), await tokenOf(phone.page)];

  const admin = await device(s, DESKTOP);
  s.extra.push(["admin", admin.page]);
  await adminSignIn(admin.page, base);
  const row = await adminFindUser(admin.page, "alice@");
  await hasText(row.getByTestId("user-active"), /^2$/, "alice has 2 active sessions");
  await row.getByTestId("view-sessions").click();
  const connected = admin.page.locator('[data-testid="session-row"][data-connected="true"]');
  await eventually(async () => (await connected.count()) === 2, "both of alice's sessions show connected", 8000);

  await row.getByTestId("logout-all").click();
  const t0 = Date.now();
  const within = async (d, name) => {
    await shows(d.page.getByTestId("banner").filter({ hasText: "admin_logout" }), `${name}: signed-out banner`, 1000);
    return Date.now() - t0;
  };
  const ms = await Promise.all([within(laptop, "laptop"), within(phone, "phone")]);
  await hasText(admin.page.getByTestId("admin-status"), /Signed out 2 sessions, 2 sockets notified/, "admin sees the counts");

  for (const [i, d] of [laptop, phone].entries()) {
    await shows(d.page.getByTestId("signed-out"), "signed-out view");
    equal(await meWith(d.page, tokens[i]), [401, "session_revoked"], "the old access token on /v1/me");
    const status = await d.page.evaluate(async () => (await window.sessiond.fetch("/v1/me")).status);
    equal(status, 401, "client.fetch('/v1/me') after the logout");
  }
  await shows(admin.page.getByText("No live sessions."), "admin: no sessions left");
  return `banners after ${Math.max(...ms)} ms`;
}

/** Two tabs of one browser: one signs out, the other follows. */
async function tabsFollowLogout(s) {
  const { base } = s.server;
  const { context, page } = await device(s);
  await s.server.call("POST", "/v1/auth/register", { body: { email: "bob@example.com", password: PASSWORD } });
  await signIn(page, base, "bob@example.com", "desktop");
  const tab2 = await context.newPage();
  s.shot = tab2;
  s.extra.push(["tab1", page]);
  await tab2.goto(base + "/");
  await waitSignedIn(tab2, "second tab resumes the session");
  const sid = await page.evaluate(() => window.sessiond.sessionId);
  await hasText(tab2.getByTestId("whoami-session"), new RegExp(sid), "second tab shows the same session");

  await page.getByTestId("logout").click();
  await shows(page.getByTestId("signed-out"), "tab 1 signed out");
  await shows(tab2.getByTestId("signed-out"), "tab 2 follows", 2000);
  await shows(tab2.getByTestId("banner").filter({ hasText: "logout" }), "tab 2 banner");
  equal(await tab2.evaluate(async () => (await window.sessiond.fetch("/v1/me")).status), 401, "tab 2 protected call");
  if (await refreshCookie(context)) fail("the refresh cookie is still there after sign-out");
}

/** The user signs out another of their devices from the devices list. */
async function signOutOtherDevice(s) {
  const { base } = s.server;
  await s.server.call("POST", "/v1/auth/register", { body: { email: "carol@example.com", password: PASSWORD } });
  const laptop = await device(s, DESKTOP);
  const phone = await device(s, PHONE);
  s.shot = phone.page;
  s.extra.push(["laptop", laptop.page]);
  await signIn(laptop.page, base, "carol@example.com", "laptop");
  await signIn(phone.page, base, "carol@example.com", "phone");
  const phoneSid = await phone.page.evaluate(() => window.sessiond.sessionId);

  const item = laptop.page.locator(`[data-testid="device"][data-session-id="${phoneSid}"]`);
  await shows(item, "the phone in the laptop's devices list");
  await eventually(async () => (await item.getAttribute("data-connected")) === "true", "the phone shows connected", 6000);
  const own = laptop.page.locator('[data-testid="device"][data-current="true"]');
  await shows(own.getByTestId("current-badge"), "the laptop is marked as this device");
  equal(await own.getByTestId("device-signout").count(), 0, "no sign-out button on the current device");

  await item.getByTestId("device-signout").click();
  await shows(phone.page.getByTestId("banner").filter({ hasText: "session_revoked" }), "phone banner", 2000);
  await shows(phone.page.getByTestId("signed-out"), "phone signed out");
  await gone(item, "the phone in the laptop's list");
  await hasText(laptop.page.getByTestId("notice"), /Signed out “phone”/, "laptop notice");
  await waitSignedIn(laptop.page, "laptop still signed in");
}

/** A page whose session was revoked while it was closed learns it on load. */
async function revokedWhileClosed(s) {
  const { base } = s.server;
  await s.server.call("POST", "/v1/auth/register", { body: { email: "dave@example.com", password: PASSWORD } });
  const tablet = await device(s, DESKTOP);
  await signIn(tablet.page, base, "dave@example.com", "tablet");
  await tablet.page.close();

  // The admin revokes it, on a phone-sized admin console.
  const admin = await device(s, PHONE);
  s.extra.push(["admin-phone", admin.page]);
  await adminSignIn(admin.page, base);
  const row = await adminFindUser(admin.page, "dave@");
  await row.getByTestId("view-sessions").click();
  const session = admin.page.getByTestId("session-row").filter({ hasText: "tablet" });
  await shows(session, "dave's tablet session");
  await eventually(async () => (await session.getAttribute("data-connected")) === "false", "closed page shows offline", 8000);
  await session.getByTestId("revoke").click();
  await hasText(admin.page.getByTestId("admin-status"), /Revoked the session “tablet”/, "admin notice");
  await gone(session, "revoked session row");

  const page = await tablet.context.newPage();
  s.shot = page;
  await page.goto(base + "/");
  await shows(page.getByTestId("signed-out"), "signed-out view on load");
  await shows(page.getByTestId("banner").filter({ hasText: "invalid_refresh_token" }), "banner on load");
  if (await refreshCookie(tablet.context)) fail("the dead refresh cookie was not deleted");
}

/**
 * A first visit (fresh profile, no cookie) and a reload after the user's own sign-out show the
 * sign-in forms and no "You were signed out" banner, on the demo and on the admin console:
 * no cookie is not a dead cookie.
 */
async function firstVisit(s) {
  const { base } = s.server;
  const { page } = await device(s);
  s.shot = page;
  // `signed-out` is rendered once `resume()` has settled, so the banner's state is final then.
  await page.goto(base + "/");
  await shows(page.getByTestId("signed-out"), "sign-in forms on a first visit");
  await gone(page.getByTestId("banner"), "no banner on a first visit", 500);
  const admin = await device(s);
  s.extra.push(["admin", admin.page]);
  await admin.page.goto(base + "/admin");
  await shows(admin.page.getByTestId("signed-out"), "admin sign-in form on a first visit");
  await gone(admin.page.getByTestId("banner"), "no admin banner on a first visit", 500);

  await s.server.call("POST", "/v1/auth/register", { body: { email: "gina@example.com", password: PASSWORD } });
  await signIn(page, base, "gina@example.com", "laptop");
  await page.getByTestId("logout").click();
  await shows(page.getByTestId("signed-out"), "signed out");
  await page.reload();
  await shows(page.getByTestId("signed-out"), "signed out after a reload");
  await gone(page.getByTestId("banner"), "no banner after the user's own sign-out and a reload", 500);
}

/**
 * A server whose issuer (so its allowed origin) is not the page's origin, as after changing
 * --listen: the page says so instead of "Connecting…" forever, and the server log names the
 * refused origin and the allowed list.
 */
async function wrongOrigin(s) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "sessiond-browser-origin-"));
  const logName = "server-wrong-origin.log";
  const other = new Server({
    host: s.server.host,
    port: await freePort(),
    dir,
    env: { SESSIOND_ISSUER: "https://auth.example.test" },
    logName,
  });
  s.cleanups.push(async () => {
    await other.stop(5000);
    rmSync(dir, { recursive: true, force: true });
  });
  await other.start();
  const base = other.base;
  await other.call("POST", "/v1/auth/register", { body: { email: "ivan@example.com", password: PASSWORD } });
  const { page } = await device(s);
  s.shot = page;
  await page.goto(base + "/");
  await hasText(page.getByTestId("error"), /refused this page's origin/, "the page names the refused origin on load");
  await page.fill("#login-email", "ivan@example.com");
  await page.fill("#login-password", PASSWORD);
  await page.click("#login-submit");
  await shows(page.getByTestId("signed-in"), "signed in (login itself is not origin-bound)");
  await hasText(page.getByTestId("error"), /live connection to the server could not be opened/, "socket error shown", 8000);
  await eventually(
    () => readFileSync(path.join(ARTIFACTS, logName), "utf8").includes("browser origin refused"),
    "the server log names the refused origin",
  );
}

/** Quick checks: the connected dot, CSRF defences on the cookie endpoints, non-admin console. */
async function quickChecks(s) {
  const { base } = s.server;
  await s.server.call("POST", "/v1/auth/register", { body: { email: "frank@example.com", password: PASSWORD } });
  const { context, page } = await device(s, PHONE);
  s.shot = page;
  await signIn(page, base, "frank@example.com", "frank's phone");
  const own = page.locator('[data-testid="device"][data-current="true"]');
  await shows(own, "own device listed");
  await eventually(async () => (await own.getAttribute("data-connected")) === "true", "own device shows connected", 6000);
  await shows(own.getByTestId("device-dot").and(page.locator(".dot.on")), "green dot");

  const before = (await refreshCookie(context)).value;
  const cookieHeader = `${COOKIE}=${before}`;
  const attempts = [
    ["refresh, foreign Origin", "/v1/auth/refresh", { origin: "http://evil.example", "x-sessiond-csrf": "1" }],
    ["refresh, no CSRF header", "/v1/auth/refresh", { origin: base }],
    ["logout, foreign Origin", "/v1/auth/logout", { origin: "http://evil.example", "x-sessiond-csrf": "1" }],
    ["logout, no Origin", "/v1/auth/logout", { "x-sessiond-csrf": "1" }],
  ];
  for (const [what, url, headers] of attempts) {
    const r = await s.server.call("POST", url, { headers: { cookie: cookieHeader, ...headers } });
    equal(r.status, 403, what);
  }

  // A real cross-site page auto-submitting forms at the cookie endpoints.
  const evil = await evilSite(s, base);
  for (const target of ["refresh", "logout"]) {
    const tab = await context.newPage();
    const [res] = await Promise.all([
      tab.waitForResponse((r) => r.url() === `${base}/v1/auth/${target}`, { timeout: SHOW_MS }),
      tab.goto(`${evil}/${target}`),
    ]);
    if (res.status() < 400) fail(`cross-site form post to ${target} got ${res.status()}`);
    s.notes.push(`cross-site ${target} form: ${res.status()}`);
    await tab.close();
  }
  equal((await refreshCookie(context))?.value, before, "refresh cookie after the forged requests");
  await waitSignedIn(page, "still signed in after the forged requests");
  equal(await page.evaluate(() => window.sessiond.refresh()), true, "a real refresh still works");
  const [res] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${base}/v1/me`),
    page.getByTestId("whoami-button").click(),
  ]);
  equal(res.status(), 200, "who am I after the forged requests");

  // A non-admin signing in to the admin console sees the server's 403 detail.
  const other = await device(s, PHONE);
  s.extra.push(["non-admin", other.page]);
  await other.page.goto(base + "/admin");
  await shows(other.page.getByTestId("signed-out"), "admin sign-in form");
  await other.page.fill("#login-email", "frank@example.com");
  await other.page.fill("#login-password", PASSWORD);
  await other.page.click("#login-submit");
  await hasText(other.page.getByTestId("error"), /You are not allowed to do this\./, "403 detail on the admin console");
  await shows(other.page.getByTestId("forbidden-help"), "non-admin explanation");
  await gone(other.page.getByTestId("console"), "users table for a non-admin");
  return s.notes.join(", ");
}

/** A tiny cross-site page (another origin and site) whose form posts to sessiond. */
async function evilSite(s, base) {
  const srv = http.createServer((req, res) => {
    const target = req.url.replace(/[^a-z]/g, "");
    res.setHeader("content-type", "text/html");
    res.end(
      `<!doctype html><title>evil</title><form method="post" action="${base}/v1/auth/${target}">` +
        `<input name="x" value="1"></form><script>document.forms[0].submit()</script>`,
    );
  });
  let host = "127.0.0.2";
  try {
    await new Promise((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(0, host, resolve);
    });
  } catch {
    host = "127.0.0.1"; // another origin (port) at least
    await new Promise((resolve) => srv.listen(0, host, resolve));
  }
  s.cleanups.push(() => new Promise((r) => srv.close(r)));
  return `http://${host}:${srv.address().port}`;
}

/** Two tabs refresh at once: one server refresh, the other tab adopts it; nobody is logged out. */
async function refreshSingleFlight(s) {
  const { base } = s.server;
  await s.server.call("POST", "/v1/auth/register", { body: { email: "grace@example.com", password: PASSWORD } });
  const { context, page } = await device(s);
  await signIn(page, base, "grace@example.com", "laptop");
  const tab2 = await context.newPage();
  s.shot = tab2;
  await tab2.goto(base + "/");
  await waitSignedIn(tab2, "second tab");

  let refreshes = 0;
  let sockets = 0;
  context.on("request", (r) => r.url().endsWith("/v1/auth/refresh") && refreshes++);
  for (const p of [page, tab2]) p.on("websocket", () => sockets++);
  const rounds = 3;
  for (let i = 0; i < rounds; i++) {
    // Both tabs call at the same instant (one clock), as two timers due together would.
    const at = Date.now() + 300;
    const results = await Promise.all(
      [page, tab2].map((p) =>
        p.evaluate((t) => new Promise((r) => setTimeout(r, t - Date.now())).then(() => window.sessiond.refresh()), at),
      ),
    );
    equal(results, [true, true], `round ${i + 1}: both tabs have a fresh token`);
  }
  const [t1, t2] = [await tokenOf(page), await tokenOf(tab2)];
  equal(refreshes, rounds, "server refreshes (one per round: the other tab adopts its broadcast)");
  equal(t1 === t2, true, "both tabs hold the same access token");
  for (const p of [page, tab2]) {
    const [res] = await Promise.all([
      p.waitForResponse((r) => r.url() === `${base}/v1/me`),
      p.getByTestId("whoami-button").click(),
    ]);
    equal(res.status(), 200, "who am I after the refreshes");
    await waitSignedIn(p, "still signed in");
  }
  equal(sockets, 0, "sockets opened during the refreshes (re-auth on the open socket expected)");
  await gone(tab2.getByTestId("banner"), "no banner");
  return `${refreshes} server refreshes for ${rounds} rounds of 2 tabs`;
}

/**
 * With 8-second access tokens (a second server): the tabs refresh before expiry, once for both
 * tabs, and re-authenticate their open sockets instead of being closed with 4401.
 */
async function proactiveRefresh(s) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "sessiond-browser-ttl-"));
  const short = new Server({
    host: s.server.host,
    port: await freePort(),
    dir,
    env: { SESSIOND_ACCESS_TTL: "8s" },
    logName: "server-short-ttl.log",
  });
  s.cleanups.push(async () => {
    await short.stop(5000);
    rmSync(dir, { recursive: true, force: true });
  });
  await short.start();
  const base = short.base;
  await short.call("POST", "/v1/auth/register", { body: { email: "heidi@example.com", password: PASSWORD } });
  const { context, page } = await device(s);
  s.shot = page;
  const frames = { auth: 0, ready: 0, sockets: 0, closes: [] };
  const watch = (p) =>
    p.on("websocket", (ws) => {
      frames.sockets++;
      ws.on("framesent", (f) => String(f.payload).includes('"auth"') && frames.auth++);
      ws.on("framereceived", (f) => String(f.payload).includes('"ready"') && frames.ready++);
      ws.on("close", () => frames.closes.push(Date.now()));
    });
  watch(page);
  await signIn(page, base, "heidi@example.com", "laptop");
  const tab2 = await context.newPage();
  watch(tab2);
  await tab2.goto(base + "/");
  await waitSignedIn(tab2, "second tab");

  const t0 = Date.now();
  const at = [];
  context.on("request", (r) => r.url().endsWith("/v1/auth/refresh") && at.push(Date.now() - t0));
  const ready0 = frames.ready;
  // Two refresh cycles: each tab's socket re-authenticates twice on the socket it has.
  await eventually(async () => frames.ready >= ready0 + 2 * 2, "ready answers to re-auth on both sockets", 20_000);
  const refreshes = at.length;
  const elapsed = Date.now() - t0;
  equal(frames.sockets, 2, "sockets opened (one per tab, none reconnected)");
  equal(frames.closes.length, 0, "sockets closed");
  if (refreshes !== 2) fail(`${refreshes} refreshes in ${elapsed} ms by two tabs (expected one per cycle: 2)`);
  for (const p of [page, tab2]) {
    await waitSignedIn(p, "still signed in");
    const [res] = await Promise.all([
      p.waitForResponse((r) => r.url() === `${base}/v1/me`),
      p.getByTestId("whoami-button").click(),
    ]);
    equal(res.status(), 200, "who am I with the refreshed token");
  }
  return `refreshes at ${at.join(", ")} ms; ${frames.auth} auth messages`;
}

/** A tab survives a server restart (1012) and reconnects without signing out. */
async function serverRestart(s) {
  const { base } = s.server;
  await s.server.call("POST", "/v1/auth/register", { body: { email: "erin@example.com", password: PASSWORD } });
  const { page } = await device(s);
  s.shot = page;
  await signIn(page, base, "erin@example.com", "laptop");

  await s.server.stop();
  await shows(page.locator('[data-testid="socket-state"][data-state="connecting"]'), "socket reconnecting", 5000);
  await s.server.start();
  const t0 = Date.now();
  await shows(page.locator('[data-testid="socket-state"][data-state="open"]'), "socket open again", 20_000);
  const reconnectMs = Date.now() - t0;
  await shows(page.getByTestId("signed-in"), "still signed in");
  await gone(page.getByTestId("banner"), "no banner");
  const [res] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${base}/v1/me`),
    page.getByTestId("whoami-button").click(),
  ]);
  equal(res.status(), 200, "who am I after the restart");
  await hasText(page.getByTestId("whoami-email"), /erin@example\.com/, "who am I shows erin");
  const own = page.locator('[data-testid="device"][data-current="true"]');
  await eventually(async () => (await own.getAttribute("data-connected")) === "true", "connected again in the list", 6000);
  return `reconnected ${reconnectMs} ms after the server was ready`;
}

const SCENARIOS = [
  ["admin-logout-all", adminLogoutAll, SCENARIO_TIMEOUT_MS],
  ["tabs-follow-logout", tabsFollowLogout, SCENARIO_TIMEOUT_MS],
  ["sign-out-other-device", signOutOtherDevice, SCENARIO_TIMEOUT_MS],
  ["revoked-while-closed", revokedWhileClosed, SCENARIO_TIMEOUT_MS],
  ["first-visit", firstVisit, SCENARIO_TIMEOUT_MS],
  ["wrong-origin", wrongOrigin, SCENARIO_TIMEOUT_MS],
  ["quick-checks", quickChecks, SCENARIO_TIMEOUT_MS],
  ["refresh-single-flight", refreshSingleFlight, SCENARIO_TIMEOUT_MS],
  ["proactive-refresh", proactiveRefresh, SCENARIO_TIMEOUT_MS],
  // Last: it restarts the server.
  ["server-restart", serverRestart, RESTART_SCENARIO_TIMEOUT_MS],
];

// ---- main -----------------------------------------------------------------------------------

let browser = null;
let server = null;
let tmp = null;
const tally = { passed: 0, failed: 0 };

async function cleanup() {
  const steps = [];
  if (browser) steps.push(withTimeout(browser.close(), 10_000, "closing the browser").catch(() => {}));
  if (server) steps.push(server.stop(5_000).catch(() => {}));
  await Promise.all(steps);
  browser = null;
  server = null;
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  tmp = null;
}

async function runScenario(name, fn, timeout) {
  const s = { browser, server, contexts: [], cleanups: [], extra: [], notes: [], pageErrors: [], shot: null };
  let error = null;
  let note = null;
  const run = fn(s);
  run.catch(() => {}); // a timed-out scenario may still reject later
  try {
    note = await withTimeout(run, timeout, name);
    if (s.pageErrors.length) fail(`uncaught page error: ${s.pageErrors[0]}`);
  } catch (e) {
    error = e;
  }
  for (const [suffix, page] of [["", s.shot], ...s.extra]) {
    if (!page || page.isClosed()) continue;
    const file = path.join(ARTIFACTS, `${name}${suffix ? "-" + suffix : ""}.png`);
    await withTimeout(page.screenshot({ path: file, fullPage: true }), 5000, "screenshot").catch(() => {});
  }
  for (const c of s.contexts) await withTimeout(c.close(), 5000, "closing a context").catch(() => {});
  for (const f of s.cleanups) await f().catch(() => {});
  if (error) {
    console.log(`FAIL ${name}: ${reasonOf(error)}`);
    return false;
  }
  console.log(`ok  ${name}${note ? `  (${note})` : ""}`);
  return true;
}

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const log of ["server.log", "server-short-ttl.log"]) rmSync(path.join(ARTIFACTS, log), { force: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
    ],
  });
  const host = await pickHost(browser);
  tmp = mkdtempSync(path.join(os.tmpdir(), "sessiond-browser-"));
  server = new Server({ host, port: await freePort(), dir: tmp });
  await server.start();
  console.log(`# ${browser.version()} against ${server.base} (${path.relative(ROOT, BIN) || BIN})`);

  for (const [name, fn, timeout] of SCENARIOS) {
    if (ONLY.length && !ONLY.includes(name)) continue;
    if (server.child.exitCode !== null || server.child.signalCode !== null) await server.start();
    if (await runScenario(name, fn, timeout)) tally.passed++;
    else tally.failed++;
  }
}

const overall = setTimeout(async () => {
  console.log(`FAIL suite: did not finish within ${OVERALL_TIMEOUT_MS / 1000} s`);
  await cleanup();
  console.log(`${tally.passed} passed, ${tally.failed + 1} failed`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => {
    await cleanup();
    process.exit(1);
  });
}

try {
  await main();
} catch (e) {
  console.log(`FAIL setup: ${reasonOf(e)}`);
  tally.failed++;
} finally {
  await cleanup();
  clearTimeout(overall);
}
console.log(`${tally.passed} passed, ${tally.failed} failed`);
process.exit(tally.failed ? 1 : 0);
