// Small DOM helpers shared by the views: an element builder (text is always set as text,
// never parsed as HTML), formatting, and the screen-reader announcer.

/** h("a", {href, class: "x"}, child...): children are nodes, strings, or arrays of them. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export function announce(text) {
  const live = document.getElementById("announce");
  if (live) live.textContent = text;
}

export const statusBadge = (status) => h("span", { class: `status status-${status}` }, status);

export function ago(iso) {
  if (!iso) return "-";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

export const short = (id) => (id ? id.slice(0, 8) : "-");
export const usd = (n) => `$${(Number(n) || 0).toFixed(4)}`;

/** The message of a client error, with its request id for the logs. */
export function problem(err) {
  const rid = err?.requestId ? ` (request ${err.requestId})` : "";
  return `${err?.code ?? "error"}: ${err?.detail ?? err?.message ?? err}${rid}`;
}

export const errorBox = (err) => h("p", { class: "error", role: "alert" }, problem(err));

/** Calls `fn` every `ms` while the page is visible, until `signal` aborts. */
export function every(ms, fn, signal) {
  let timer = null;
  const tick = async () => {
    if (signal.aborted) return;
    if (document.visibilityState === "visible") {
      try { await fn(); } catch { /* the next tick tries again */ }
    }
    if (!signal.aborted) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
}
