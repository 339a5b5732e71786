// Runs: newest first, statuses refreshed live, filters (status, agent, thread; user for
// operators), a search by id, and keyset paging (`next_cursor`): a page costs the same on
// the millionth run as on the first. Operators list every user's runs (`GET /ops/runs`).
import { h, replace, statusBadge, ago, short, usd, errorBox, every, announce } from "./dom.js";

const STATUSES = ["", "queued", "running", "waiting", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 2000;

export async function render(ctx, main) {
  const { client, me, signal } = ctx;
  const filters = { status: "", agent: "", threadId: "", user: "" };
  const pages = [null]; // cursors of the pages walked so far: [first, second, ...]
  let page = 0;
  let next = null;

  const field = (label, id, el) => h("label", { for: id }, label, el);
  const statusSel = h("select", { id: "f-status" },
    STATUSES.map((s) => h("option", { value: s }, s || "any")));
  const agentIn = h("input", { id: "f-agent", placeholder: "any" });
  const threadIn = h("input", { id: "f-thread", placeholder: "any" });
  const userIn = me.operator ? h("input", { id: "f-user", placeholder: "any" }) : null;
  const searchIn = h("input", { id: "f-search", placeholder: "run id", size: 38 });
  const body = h("tbody");
  const info = h("p", { class: "muted", "aria-live": "polite" });
  const older = h("button", { type: "button", class: "secondary", onclick: () => go(page + 1) },
    "Older");
  const newer = h("button", { type: "button", class: "secondary", onclick: () => go(page - 1) },
    "Newer");
  const failure = h("div");

  const filterForm = h("form", { class: "row", "aria-label": "Filter runs", onsubmit: (e) => {
    e.preventDefault();
    Object.assign(filters, { status: statusSel.value, agent: agentIn.value.trim(),
      threadId: threadIn.value.trim(), user: userIn?.value.trim() ?? "" });
    pages.length = 1;
    go(0);
  } },
  field("Status", "f-status", statusSel), field("Agent", "f-agent", agentIn),
  field("Thread", "f-thread", threadIn), userIn ? field("User", "f-user", userIn) : null,
  h("button", { type: "submit" }, "Filter"));
  const searchForm = h("form", { class: "row", role: "search", onsubmit: (e) => {
    e.preventDefault();
    const id = searchIn.value.trim().toLowerCase();
    if (/^[0-9a-f-]{36}$/.test(id)) window.location.hash = `#/runs/${id}`;
    else replace(failure, errorBox({ code: "invalid_run_id", detail: "run ids are UUIDs" }));
  } }, h("label", { for: "f-search" }, "Find a run by id", searchIn),
  h("button", { type: "submit", class: "secondary" }, "Open"));

  main.append(
    h("h1", {}, me.operator ? "Runs (all users)" : "Runs"),
    searchForm, filterForm, failure,
    h("table", { "aria-label": "Runs, newest first" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Run"), me.operator ? h("th", { scope: "col" }, "User") : null,
        h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Agent"),
        h("th", { scope: "col" }, "Thread"), h("th", { scope: "col" }, "Created"),
        h("th", { scope: "col" }, "Attempts"), h("th", { scope: "col" }, "Cost"))),
      body),
    h("div", { class: "row" }, newer, older, info));

  async function load() {
    const query = { limit: 25, cursor: pages[page], status: filters.status || null,
      thread_id: filters.threadId || null, agent: filters.agent || null };
    if (me.operator) query.user = filters.user || null;
    const path = me.operator ? "/ops/runs" : "/runs";
    const answer = (await client.request("GET", path, { query, signal })).body;
    next = answer.next_cursor;
    replace(body, answer.runs.map((r) => h("tr", { "data-run": r.run_id },
      h("td", {}, h("a", { href: `#/runs/${r.run_id}`, class: "mono",
        "aria-label": `run ${r.run_id}` }, short(r.run_id))),
      me.operator ? h("td", {}, r.user_id) : null,
      h("td", {}, statusBadge(r.status)), h("td", {}, r.agent), h("td", {}, r.thread_id ?? "-"),
      h("td", {}, ago(r.created_at)), h("td", {}, String(r.attempts)),
      h("td", {}, usd(r.cost_usd)))));
    if (!answer.runs.length) replace(body, h("tr", {}, h("td", { colspan: 8 }, "No runs.")));
    older.disabled = !next;
    newer.disabled = page === 0;
    info.textContent = `page ${page + 1}`;
    replace(failure);
  }

  async function go(n) {
    if (n > page) pages[n] = next;
    page = Math.max(0, n);
    try { await load(); announce(`page ${page + 1} of runs`); } catch (err) {
      replace(failure, errorBox(err));
    }
  }

  await load();
  every(REFRESH_MS, load, signal);
}
