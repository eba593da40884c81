// The UI's shell: routing between pages, the header's live status, login, dialogs, refresh.

import { ApiError, currentSession, get, loadSession, login, logout } from "./api.js";
import { h, fill, num } from "./dom.js";
import { detailPage } from "./detail.js";
import { failuresPage } from "./failures.js";
import { flowPage } from "./flow.js";
import { hostsPage } from "./hosts.js";
import { modelsPage } from "./models.js";
import { queryPage } from "./query.js";

const REFRESH_MS = 3000;
const SESSION_CHECK_MS = 30000;
const PAGES = { models: modelsPage, handler: detailPage, hosts: hostsPage, flow: flowPage, failures: failuresPage, query: queryPage };

const main = document.getElementById("main");
const banners = document.getElementById("banners");
const topStatus = document.getElementById("top-status");
const account = document.getElementById("account");

let page = null;
let routeKey = "";
let timer = 0;
let running = false;
let again = false;
let sessionCheckedAt = Date.now();
let lastStatus = null;

/** Where we are: the page's name, its argument and its query parameters. */
function parseRoute() {
  let path = location.hash.replace(/^#/, "");
  if (!path) path = location.pathname === "/" ? "/" : location.pathname + location.search;
  const [pathname, search = ""] = path.split("?");
  const parts = pathname.split("/").filter(Boolean);
  const params = new URLSearchParams(search);
  if (parts.length === 0) return { name: "models", arg: null, params };
  if (parts[0] === "handler" && parts.length > 1) return { name: "handler", arg: decodeURIComponent(parts.slice(1).join("/")), params };
  if (PAGES[parts[0]]) return { name: parts[0], arg: null, params };
  return { name: "missing", arg: pathname, params };
}

/** Keep the page's own state (filters) in the address without adding history entries. */
function setParams(params) {
  const { name, arg } = parseRoute();
  const base = name === "models" ? "/" : name === "handler" ? `/handler/${encodeURIComponent(arg)}` : `/${name}`;
  const query = params.toString();
  const hash = `#${base}${query ? `?${query}` : ""}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
  routeKey = routeKeyOf(parseRoute());
}

function routeKeyOf(route) {
  return `${route.name}/${route.arg ?? ""}`;
}

const ctx = {
  session: currentSession,
  confirm,
  refresh: () => schedule(0),
  navigate: (hash) => {
    location.hash = hash;
  },
  openLogin,
  setParams,
  status: () => lastStatus,
};

function showPage() {
  const route = parseRoute();
  const key = routeKeyOf(route);
  if (key === routeKey && page) return;
  routeKey = key;
  if (page && page.destroy) page.destroy();
  const make = PAGES[route.name];
  page = make ? make(ctx, route.arg, route.params) : missingPage(route.arg);
  main.replaceChildren(page.node);
  for (const link of document.querySelectorAll(".nav a")) {
    const current = link.dataset.page === (route.name === "handler" ? "models" : route.name);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = page.title ? `${page.title} · logistik` : "logistik";
  schedule(0);
}

function missingPage(path) {
  return {
    title: "Not found",
    node: h("section", { class: "page" }, h("div", { class: "empty" }, h("h1", {}, "No such page"),
      h("p", {}, `Nothing lives at ${path}. `, h("a", { href: "#/" }, "Back to the models")))),
    refresh: async () => {},
  };
}

function schedule(delayMs) {
  clearTimeout(timer);
  timer = setTimeout(tick, delayMs);
}

async function tick() {
  if (running) {
    again = true;
    return;
  }
  running = true;
  clearTimeout(timer);
  try {
    if (Date.now() - sessionCheckedAt > SESSION_CHECK_MS) {
      sessionCheckedAt = Date.now();
      const before = JSON.stringify(currentSession());
      await loadSession().catch(() => {});
      if (JSON.stringify(currentSession()) !== before) renderAccount();
    }
    let failure = null;
    try {
      await refreshStatus();
    } catch (error) {
      failure = error;
    }
    try {
      if (page) await page.refresh();
    } catch (error) {
      failure = failure || error;
    }
    showProblem(failure);
  } finally {
    running = false;
    if (again) {
      again = false;
      schedule(0);
    } else {
      schedule(document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
    }
  }
}

function showProblem(error) {
  if (!error) {
    setBanner("problem", null);
    return;
  }
  if (error instanceof ApiError && error.status === 401) {
    setBanner("problem", h("div", { class: "banner info" },
      h("strong", {}, "Log in to see logistik. "), "Reading is protected on this router. ",
      h("button", { type: "button", class: "btn small", onclick: () => openLogin() }, "Log in")));
    return;
  }
  if (error instanceof ApiError && error.status === 0) {
    setBanner("problem", h("div", { class: "banner error" }, h("strong", {}, "Cannot reach logistik. "),
      `Showing the last figures; retrying every ${REFRESH_MS / 1000} s.`));
    return;
  }
  if (!(error instanceof ApiError)) console.error(error);
  setBanner("problem", h("div", { class: "banner error" }, h("strong", {}, "Refresh failed: "), String(error.message || error)));
}

function setBanner(name, node) {
  const old = banners.querySelector(`[data-banner="${name}"]`);
  if (!node) {
    if (old) old.remove();
    return;
  }
  node.dataset.banner = name;
  const key = node.textContent;
  if (old && old.dataset.text === key) return;
  node.dataset.text = key;
  if (old) old.replaceWith(node);
  else banners.append(node);
}

async function refreshStatus() {
  const status = await get("/api/status");
  lastStatus = status;
  const consuming = status.consuming;
  const pills = [
    h("span", { class: `pill ${consuming ? "good" : "warn"}`, title: `consumer group ${status.group_id}` },
      h("span", { class: "dot" }), consuming ? "Consuming" : "Not consuming"),
    h("span", { class: "pill plain", title: "events being routed now / the most at once" },
      `${num(status.in_flight)} / ${num(status.max_in_flight)} in flight`),
  ];
  const unreachable = status.unreachable || [];
  if (unreachable.length) {
    pills.push(h("span", { class: "pill bad", title: `cannot be reached: ${unreachable.join(", ")}` },
      h("span", { class: "dot" }), `${num(unreachable.length)} unreachable`));
  }
  const workers = status.workers || [];
  if (workers.length > 1) {
    const down = workers.filter((w) => !w.ok);
    const detail = workers.map((w) => `worker ${w.index}: ${w.ok ? "consuming" : w.detail || "not consuming"}`).join("\n");
    pills.push(h("span", { class: `pill ${down.length ? "bad" : "plain"}`, title: detail },
      down.length ? `${num(workers.length - down.length)} / ${num(workers.length)} workers` : `${num(workers.length)} workers`));
  }
  const consul = status.consul;
  if (consul) {
    pills.push(h("span", { class: `pill ${consul.error ? "bad" : "good"}`, title: consul.url || "Consul" },
      h("span", { class: "dot" }), consul.error ? "Consul error" : "Consul"));
  }
  fill(topStatus, JSON.stringify([consuming, status.in_flight, status.max_in_flight, consul, status.group_id, unreachable, workers]), pills);
  setBanner("consul", consul && consul.error ? h("div", { class: "banner error", role: "alert" },
    h("strong", {}, "Consul cannot be reached: "), consul.error,
    h("span", { class: "muted" }, ` (${consul.url}). Routing goes on with the last known models.`)) : null);
  const notFetched = status.not_fetched || [];
  setBanner("not-fetched", notFetched.length ? h("div", { class: "banner error", role: "alert" },
    h("strong", {}, `Records not fetched on ${num(notFetched.length)} partition${notFetched.length === 1 ? "" : "s"}: `),
    notFetched.map((s) => s.detail).join("; ")) : null);
}

function renderAccount() {
  const session = currentSession();
  if (!session.known) {
    account.replaceChildren();
    return;
  }
  if (session.user) {
    account.replaceChildren(
      h("span", { class: "user", title: session.can_write ? "may change models" : "may only read" },
        h("span", { class: "avatar", "aria-hidden": "true" }, session.user.slice(0, 1).toUpperCase()),
        h("span", { class: "user-name" }, session.user),
        session.can_write ? null : h("span", { class: "muted" }, " (read only)")),
      h("button", { type: "button", class: "btn small", onclick: doLogout }, "Log out"));
  } else {
    account.replaceChildren(h("button", { type: "button", class: "btn small primary", id: "login-button", onclick: () => openLogin() }, "Log in"));
  }
}

async function doLogout() {
  await logout().catch(() => {});
  renderAccount();
  schedule(0);
}

// The login dialog.
const loginDialog = document.getElementById("login-dialog");
const loginError = document.getElementById("login-error");
const tabs = [
  [document.getElementById("tab-password"), document.getElementById("login-password")],
  [document.getElementById("tab-token"), document.getElementById("login-token")],
];

function selectTab(index) {
  tabs.forEach(([tab, panel], i) => {
    tab.setAttribute("aria-selected", String(i === index));
    tab.tabIndex = i === index ? 0 : -1;
    panel.hidden = i !== index;
  });
}

tabs.forEach(([tab], i) => {
  tab.addEventListener("click", () => selectTab(i));
  tab.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      const next = (i + 1) % tabs.length;
      selectTab(next);
      tabs[next][0].focus();
    }
  });
});

function openLogin() {
  loginError.hidden = true;
  const oidc = document.getElementById("login-oidc");
  oidc.hidden = !currentSession().oidc;
  oidc.querySelector("a").href = `/auth/oidc/login?next=${encodeURIComponent(location.pathname)}`;
  for (const [, panel] of tabs) panel.reset();
  loginDialog.showModal();
  const visible = tabs.find(([, panel]) => !panel.hidden)[1];
  visible.querySelector("input").focus();
}

for (const [, panel] of tabs) {
  panel.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(panel));
    const buttons = panel.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    loginError.hidden = true;
    try {
      await login(data);
      panel.reset();
      loginDialog.close();
      renderAccount();
      schedule(0);
    } catch (error) {
      loginError.textContent = error.status === 401 || error.status === 403 ? `Not logged in: ${error.detail}` : error.message;
      loginError.hidden = false;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
  for (const close of panel.querySelectorAll("[data-close]")) close.addEventListener("click", () => loginDialog.close());
}

// The confirmation dialog: names the model and the action; runs the action when confirmed.
const confirmDialog = document.getElementById("confirm-dialog");
const confirmForm = document.getElementById("confirm-form");
let pending = null;

/** Ask before an action; resolves true when confirmed, false when cancelled. */
function confirm({ title, text, confirmLabel, danger = false, extra = null }) {
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").replaceChildren(...(Array.isArray(text) ? text : [text]).map((t) => (t instanceof Node ? t : h("p", {}, t))));
  document.getElementById("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  document.getElementById("confirm-error").hidden = true;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = confirmLabel;
  ok.className = `btn ${danger ? "danger" : "primary"}`;
  confirmDialog.showModal();
  const first = confirmDialog.querySelector("#confirm-extra input");
  (first || document.getElementById("confirm-cancel")).focus();
  return new Promise((resolve) => {
    pending = resolve;
  });
}

function settle(value) {
  if (pending) {
    const resolve = pending;
    pending = null;
    resolve(value);
  }
}

confirmForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const invalid = confirmForm.querySelector(":invalid");
  if (invalid) {
    invalid.reportValidity();
    return;
  }
  settle(true);
  confirmDialog.close();
});
document.getElementById("confirm-cancel").addEventListener("click", () => {
  settle(false);
  confirmDialog.close();
});
confirmDialog.addEventListener("close", () => settle(false));

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) schedule(0);
});
window.addEventListener("hashchange", showPage);
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

/** A login link (`#login=<token>`, as `logistik demo` prints one): log in with its token and
 *  take the token out of the address at once, so it stays in neither history nor bookmarks. */
async function loginFromLink() {
  const match = /^#login=([^&]+)$/.exec(location.hash);
  if (!match) return;
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  try {
    await login({ token: decodeURIComponent(match[1]) });
  } catch (error) {
    setBanner("login", h("div", { class: "banner error", role: "alert" }, h("strong", {}, "The login link did not work: "),
      error.status === 401 ? "its token is not valid here (a demo makes a new one at each start: use the link it printed last). " : `${error.message}. `,
      h("button", { type: "button", class: "btn small", onclick: () => { setBanner("login", null); openLogin(); } }, "Log in")));
  }
}

async function start() {
  try {
    await loginFromLink();
    await loadSession();
  } catch {
    // The router is not reachable: the refresh shows it and keeps trying.
  }
  renderAccount();
  showPage();
}

start();
