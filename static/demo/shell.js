// What every page of the app has: the connection, the connection indicator, the bell with
// its unread badge and inbox, and toasts for new notifications. The reference integration
// of renum-rt.js for the Renum frontend: copy what you need.

import { RenumRealtime } from "/static/renum-rt.js";

// The top bar of every page: written here once, not repeated in each HTML file.
document.getElementById("topbar").innerHTML = `
<a class="brand" href="/demo/"><span class="logo">R</span>Renum</a>
<nav class="nav">
  <a href="/demo/" data-nav="home">Dashboard</a>
  <a href="/demo/executions/42" data-nav="execution">Execution 42</a>
</nav>
<div class="spacer"></div>
<div id="conn" class="conn" data-state="connecting" role="status"><span class="dot"></span><span class="label">Connecting…</span><button type="button" hidden>Retry</button></div>
<div class="bell-wrap">
  <button id="bell" class="bell" type="button" aria-label="Notifications">
    <svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true"><path d="M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9"/><path d="M13.73 21a2 2 0 0 1-3.46 0"/></svg>
    <span class="badge" hidden>0</span>
  </button>
  <div id="inbox" class="inbox" hidden>
    <div class="inbox-head"><h2>Notifications</h2><button type="button" class="linkish mark-all">Mark all as read</button></div>
    <div class="inbox-tabs" role="tablist">
      <button type="button" role="tab" aria-selected="true" data-status="">Inbox</button>
      <button type="button" role="tab" aria-selected="false" data-status="unread">Unread</button>
      <button type="button" role="tab" aria-selected="false" data-status="dismissed">Dismissed</button>
    </div>
    <div class="inbox-list"></div>
    <div class="inbox-foot"><button type="button" class="linkish more" hidden>Load more</button></div>
  </div>
</div>
  `;

const TOKEN_KEY = "renum-demo-token";
/** Reconnection attempts before the indicator shows "Offline" with a retry button. */
const ATTEMPTS = 5;
/** Notifications older than this when they arrive were waiting for us: listed, not toasted. */
const TOAST_MAX_AGE_MS = 60_000;

/**
 * The signed-in session: in dev mode the server gives a token for dev-user (and a
 * subscription token for `channel`); otherwise the visitor pastes one, kept for the tab.
 * Resolves to null when the page must ask first (the sign-in card is shown).
 */
export async function session(channel) {
  const query = channel ? `?channel=${encodeURIComponent(channel)}` : "";
  const answer = await fetch(`/demo/token${query}`, { cache: "no-store" });
  if (answer.ok) {
    const body = await answer.json();
    return { dev: true, token: body.token, grant: body.grant, getToken: async () => (await (await fetch("/demo/token")).json()).token };
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showSignIn();
    return null;
  }
  const grant = channel ? sessionStorage.getItem(`${TOKEN_KEY}:${channel}`) || undefined : undefined;
  return { dev: false, token, grant, getToken: () => sessionStorage.getItem(TOKEN_KEY) };
}

function showSignIn() {
  const main = document.querySelector("main");
  main.innerHTML = `
    <section class="card signin">
      <h2>Sign in</h2>
      <div class="content">
        <p class="muted">This server is not in development mode, so the demo needs a user token
          (a JWT your identity provider issued, signed with the server's key).</p>
        <label for="token">User token</label>
        <textarea id="token" spellcheck="false" placeholder="eyJhbGciOi..."></textarea>
        <label for="grant">Subscription token for this execution (optional)</label>
        <textarea id="grant" spellcheck="false" placeholder="only on an execution page"></textarea>
        <button class="primary" id="sign-in">Continue</button>
      </div>
    </section>`;
  main.querySelector("#sign-in").addEventListener("click", () => {
    const token = main.querySelector("#token").value.trim();
    const grant = main.querySelector("#grant").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    const channel = document.body.dataset.channel;
    if (grant && channel) sessionStorage.setItem(`${TOKEN_KEY}:${channel}`, grant);
    location.reload();
  });
}

/** Start the connection and every piece of the shell; returns the client. */
export function startShell(auth) {
  const rt = new RenumRealtime({ getToken: auth.getToken, reconnect: { attempts: ATTEMPTS } });
  connectionIndicator(rt, document.getElementById("conn"));
  const inbox = inboxPanel(rt);
  bell(rt, inbox);
  toasts(rt, document.getElementById("toasts"));
  rt.connect();
  return rt;
}

// ------------------------------------------------------------------ connection indicator

function connectionIndicator(rt, el) {
  const label = el.querySelector(".label");
  const button = el.querySelector("button");
  const show = (state, text) => {
    el.dataset.state = state;
    label.textContent = text;
    button.hidden = !(state === "failed" || state === "unauthorized" || state === "disconnected");
  };
  rt.on("state", (state) => {
    const text = {
      connecting: "Connecting…",
      connected: "Live",
      reconnecting: "Reconnecting…",
      disconnected: "Disconnected",
      failed: "Offline",
      unauthorized: "Signed out",
    }[state];
    show(state, text);
  });
  rt.on("reconnecting", ({ attempt, delayMs }) => {
    show("reconnecting", `Reconnecting (attempt ${attempt} of ${ATTEMPTS}, in ${(delayMs / 1000).toFixed(1)} s)`);
  });
  button.addEventListener("click", () => rt.retry());
  show("connecting", "Connecting…");
}

// ------------------------------------------------------------------ the bell and the inbox

function bell(rt, inbox) {
  const button = document.getElementById("bell");
  const badge = button.querySelector(".badge");
  rt.on("unread_count", (count) => {
    badge.hidden = count === 0;
    badge.textContent = count > 99 ? "99+" : String(count);
    button.setAttribute("aria-label", `Notifications, ${count} unread`);
  });
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    inbox.toggle();
  });
}

function inboxPanel(rt) {
  const panel = document.getElementById("inbox");
  const list = panel.querySelector(".inbox-list");
  const more = panel.querySelector(".more");
  const markAll = panel.querySelector(".mark-all");
  let status; // undefined: unread and read
  let cursor = null;
  let newest = null;

  async function load(append = false) {
    if (rt.state !== "connected") {
      list.innerHTML = `<div class="inbox-empty">Not connected: the list comes back with the connection.</div>`;
      return;
    }
    try {
      const page = await rt.notifications.list({ status, limit: 20, ...(append && cursor ? { cursor } : {}) });
      if (!append) {
        list.replaceChildren();
        newest = page.items[0]?.id ?? null;
      }
      for (const item of page.items) list.append(row(item));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      markAll.disabled = page.unread === 0;
      if (!list.children.length) list.innerHTML = `<div class="inbox-empty">You're all caught up.</div>`;
    } catch (error) {
      list.innerHTML = `<div class="inbox-empty">Could not load notifications (${error.code || error.message}).</div>`;
    }
  }

  function row(item) {
    const li = document.createElement("div");
    li.className = "note";
    li.dataset.id = item.id;
    li.dataset.level = item.level || "info";
    li.dataset.status = item.status;
    li.innerHTML = `<span class="level"></span>
      <div class="text"><div class="title"></div><div class="body"></div><div class="meta"></div></div>
      <div class="actions"></div>`;
    li.querySelector(".title").textContent = item.title;
    li.querySelector(".body").textContent = item.body || "";
    li.querySelector(".meta").textContent = ago(item.created_at);
    const actions = li.querySelector(".actions");
    if (item.status === "unread") actions.append(action("✓", "Mark as read", () => rt.notifications.markRead([item.id])));
    if (item.status !== "dismissed") actions.append(action("✕", "Dismiss", () => rt.notifications.dismiss([item.id])));
    const link = demoLink(item.link);
    if (link) {
      li.querySelector(".title").style.cursor = "pointer";
      li.querySelector(".title").addEventListener("click", () => {
        if (item.status === "unread") rt.notifications.markRead([item.id]).catch(() => {});
        location.href = link;
      });
    }
    return li;
  }

  function action(symbol, label, run) {
    const button = document.createElement("button");
    button.className = "icon-btn";
    button.textContent = symbol;
    button.title = label;
    button.setAttribute("aria-label", label);
    button.addEventListener("click", async (event) => {
      event.stopPropagation();
      button.disabled = true;
      try { await run(); } catch (error) { console.error(error); }
    });
    return button;
  }

  for (const tab of panel.querySelectorAll(".inbox-tabs button")) {
    tab.addEventListener("click", () => {
      for (const other of panel.querySelectorAll(".inbox-tabs button")) other.setAttribute("aria-selected", String(other === tab));
      status = tab.dataset.status || undefined;
      load();
    });
  }
  more.addEventListener("click", () => load(true));
  markAll.addEventListener("click", () => rt.notifications.markAllRead(newest ? { before: newest } : {}).catch(console.error));
  panel.addEventListener("click", (event) => event.stopPropagation());
  document.addEventListener("click", () => { panel.hidden = true; });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") panel.hidden = true; });

  // every change, from this tab or any other, reloads what is shown
  rt.on("event", (event) => {
    if (!panel.hidden && (event.event === "notification.created" || event.event === "notification.updated")) load();
  });
  rt.on("state", (state) => { if (state === "connected" && !panel.hidden) load(); });

  return {
    toggle() {
      panel.hidden = !panel.hidden;
      if (!panel.hidden) load();
    },
  };
}

// ------------------------------------------------------------------ toasts

function toasts(rt, box) {
  rt.on("notification", (n) => {
    if (Date.now() - n.created_at > TOAST_MAX_AGE_MS) return;
    const toast = document.createElement("div");
    toast.className = "toast";
    toast.dataset.level = n.level || "info";
    toast.setAttribute("role", "status");
    toast.innerHTML = `<div class="text"><div class="title"></div><div class="body"></div></div>`;
    toast.querySelector(".title").textContent = n.title;
    toast.querySelector(".body").textContent = n.body || "";
    const link = demoLink(n.link);
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.textContent = "Open";
      toast.append(a);
    }
    const close = document.createElement("button");
    close.className = "icon-btn";
    close.textContent = "✕";
    close.setAttribute("aria-label", "Close");
    close.addEventListener("click", () => toast.remove());
    toast.append(close);
    box.prepend(toast);
    while (box.children.length > 4) box.lastChild.remove();
    setTimeout(() => toast.remove(), 8000);
  });
}

// ------------------------------------------------------------------ helpers

/** The app's links (`/executions/42`) lead to the demo's own pages. */
export function demoLink(link) {
  if (!link) return null;
  return link.startsWith("/executions/") ? `/demo${link}` : link;
}

export function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

export const STATUS_LABELS = {
  queued: "Queued", running: "Running", completed: "Completed", failed: "Failed", cancelled: "Cancelled",
};
