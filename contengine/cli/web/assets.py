"""The dashboard's own style and script, served as files (the page's security policy
allows no inline script)."""

from __future__ import annotations

# Added to the static pages' style (timeline.STYLE): the bar on top, filters, actions.
DASHBOARD_STYLE = """
nav.top { display: flex; gap: 18px; align-items: baseline; margin-bottom: 16px; }
nav.top .brand { font-weight: 700; color: var(--ink); text-decoration: none; }
nav.top .live { color: var(--soft); font-size: 12px; margin-left: auto; }
nav.top .live.stale { color: var(--fail); }
form.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; }
form.filters label { display: flex; flex-direction: column; font-size: 12px;
  color: var(--soft); gap: 2px; }
input, select, button { font: inherit; padding: 4px 8px; border: 1px solid var(--line);
  border-radius: 6px; background: #fff; }
button { cursor: pointer; background: var(--group); }
button.danger { background: #fbe5e5; color: #b02a2a; border-color: #f0c4c4; }
.pager { display: flex; gap: 14px; align-items: center; margin: 10px 0; }
.actions { display: flex; flex-wrap: wrap; gap: 18px; align-items: end; }
.actions form { display: flex; gap: 6px; align-items: end; }
.message { margin-top: 10px; min-height: 1.4em; }
.message.bad { color: #b02a2a; }
.message.good { color: #23795a; }
.published pre { margin: 0; white-space: pre-wrap; }
a { color: #2f6aa8; }
"""

# Each element with data-live="URL" is refreshed from URL (an HTML fragment) every
# second while the tab is shown; forms with data-action post to the dashboard's API with
# the token from <meta name="contengine-token"> after a confirmation.
DASHBOARD_SCRIPT = r"""
"use strict";
const token = document.querySelector('meta[name="contengine-token"]').content;
const status = document.getElementById("live-status");

async function refresh(el) {
  try {
    const r = await fetch(el.dataset.live, {headers: {"X-Contengine-Token": token}});
    if (!r.ok) throw new Error(r.status + " " + r.statusText);
    const html = await r.text();
    if (html !== el.dataset.shown) {
      const open = [...el.querySelectorAll("details[open]")].map(d => d.id).filter(Boolean);
      el.innerHTML = html;
      el.dataset.shown = html;
      for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; }
    }
    status.textContent = "live · " + new Date().toLocaleTimeString();
    status.classList.remove("stale");
  } catch (e) {
    status.textContent = "not updating: " + e.message;
    status.classList.add("stale");
  }
}

async function tick() {
  if (!document.hidden) {
    await Promise.all([...document.querySelectorAll("[data-live]")].map(refresh));
  }
  setTimeout(tick, 1000);
}

for (const el of document.querySelectorAll("[data-live]")) el.dataset.shown = el.innerHTML;
setTimeout(tick, 1000);

for (const form of document.querySelectorAll("form[data-action]")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = document.getElementById("action-message");
    if (!window.confirm(form.dataset.confirm)) return;
    const body = new URLSearchParams(new FormData(form));
    try {
      const r = await fetch(form.dataset.action, {
        method: "POST", body,
        headers: {"X-Contengine-Token": token},
      });
      const answer = await r.json();
      message.textContent = answer.message;
      message.className = "message " + (r.ok ? "good" : "bad");
      if (r.ok && answer.go) window.location.assign(answer.go);
      for (const el of document.querySelectorAll("[data-live]")) refresh(el);
    } catch (e) {
      message.textContent = "the dashboard did not answer: " + e.message;
      message.className = "message bad";
    }
  });
}
"""
