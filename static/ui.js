// Page helpers shared by the demo app (app.js) and the admin console (admin.js): the message
// regions, the signed-out banner, busy buttons and small DOM utilities. Both pages have the
// same ids for these (#error, #notice, #banner, #banner-detail, #banner-reason).

import { describeReason, SessiondError } from "/static/sessiond.js";

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** Shows an error's `detail` (never a stack) in the live region. */
export function showError(err) {
  if (err instanceof SessiondError) {
    $("error").textContent = err.detail;
  } else {
    console.error(err);
    $("error").textContent = "Something went wrong. Please try again.";
  }
}

export function showNotice(text) {
  $("error").textContent = "";
  $("notice").textContent = text;
}

export function clearMessages() {
  $("error").textContent = "";
  $("notice").textContent = "";
}

/** The session was ended from elsewhere (another device or tab, an admin, on load). */
export function showBanner(reason) {
  clearMessages(); // whatever they said is about a session that is gone
  $("banner-detail").textContent = describeReason(reason);
  $("banner-reason").textContent = reason;
  $("banner").dataset.reason = reason;
  $("banner").hidden = false;
}

export function hideBanner() {
  $("banner").hidden = true;
}

/** Runs an action with its button disabled, showing its error if it fails. */
export async function busy(button, action) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await action();
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** "just now", "5 min ago", … */
export function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A new element with an optional class and text. */
export function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}
