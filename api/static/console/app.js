// The console's shell: sign-in (the key lives in this tab's sessionStorage and nowhere else),
// the API client, and a hash router that mounts one view at a time into <main>. Each view is
// `render(ctx, main, params)`; `ctx.signal` aborts when the user navigates away, ending its
// streams and timers.
import { Client, UnauthorizedError } from "./longrun.js";
import { h, replace, errorBox, announce } from "./dom.js";
import * as runs from "./runs.js";
import * as run from "./run.js";
import * as submit from "./submit.js";
import * as threads from "./threads.js";
import * as ops from "./ops.js";

const KEY = "longrun.apiKey";
// The API's base: this page is `<base>/console`.
const BASE = new URL(".", window.location.href).href.replace(/\/$/, "");
const state = { client: null, me: null, view: null };
window.longrunConsole = state; // for tests and the curious: what the page holds

const ROUTES = [
  [/^#\/runs\/([0-9a-fA-F-]{36})$/, run],
  [/^#\/runs\/?$/, runs],
  [/^#\/submit$/, submit],
  [/^#\/threads(?:\/(.+))?$/, threads],
  [/^#\/ops$/, ops],
];

async function signIn(key) {
  const client = new Client({ baseUrl: BASE, apiKey: key });
  const me = (await client.request("GET", "/me")).body;
  sessionStorage.setItem(KEY, key);
  state.client = client;
  state.me = me;
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-ops").hidden = !me.operator;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent =
    `${me.user}${me.operator ? " (operator)" : ""}`;
}

function signOut(why) {
  sessionStorage.removeItem(KEY);
  state.client = null;
  state.me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  if (why instanceof Error) {
    state.view?.abort();
    signInView(document.getElementById("main"), why);
    return;
  }
  window.location.hash = "";
  route();
}

function signInView(main, failure) {
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off",
    required: true, size: 48, "aria-describedby": "key-help" });
  const form = h("form", { class: "panel", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await signIn(input.value.trim());
      input.value = "";
      if (!window.location.hash || window.location.hash === "#/") window.location.hash = "#/runs";
      else route();
    } catch (err) {
      signInView(main, err instanceof UnauthorizedError
        ? { code: "unauthorized", detail: "unknown or revoked key", requestId: err.requestId }
        : err);
    }
  } },
  h("h1", {}, "Sign in"),
  h("label", { for: "api-key" }, "API key or operator key"),
  input,
  h("p", { id: "key-help" }, "Kept in this tab's session storage only; closing the tab forgets it. ",
    "Make one with ", h("code", {}, "longrun keys create --user NAME"), "."),
  h("button", { type: "submit" }, "Sign in"),
  failure ? errorBox(failure) : null);
  replace(main, form);
  input.focus();
}

async function route() {
  const main = document.getElementById("main");
  state.view?.abort();
  state.view = new AbortController();
  state.run = null; // the run page's state, set again by the next run page
  if (!state.client) {
    const saved = sessionStorage.getItem(KEY);
    if (saved) {
      try { await signIn(saved); } catch { sessionStorage.removeItem(KEY); }
    }
  }
  if (!state.client) { signInView(main); return; }
  const hash = window.location.hash || "#/runs";
  let found = null;
  for (const [pattern, view] of ROUTES) {
    const m = hash.match(pattern);
    if (m) { found = [view, m.slice(1)]; break; }
  }
  const name = hash.split("/")[1] ?? "runs";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!found) { replace(main, h("h1", {}, "Not found")); return; }
  const ctx = { client: state.client, me: state.me, signal: state.view.signal, state };
  main.replaceChildren();
  try {
    await found[0].render(ctx, main, found[1]);
  } catch (err) {
    if (ctx.signal.aborted) return;
    if (err instanceof UnauthorizedError) { // revoked since sign-in: forget it, ask again
      signOut(err);
      return;
    }
    main.append(errorBox(err));
  }
  announce(document.title = `longrun – ${main.querySelector("h1")?.textContent ?? ""}`);
}

document.getElementById("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
