// A run: tokens as they stream, tool calls as a timeline, resumes marked where they happened,
// usage and cost, the output or the error, diagnostics while it runs, a cancel button, and the
// connection's state. Events arrive through the client's `stream` on the run's `events_url`
// (its run-scoped token: the key is in no URL), which resumes after the last event on every
// drop, so the page holds each event once, in order. Rendering is batched per frame and the
// event list is virtualised: a run of 100,000 events does not freeze the page.
import { NotFoundError, TERMINAL_STATUSES } from "./longrun.js";
import { h, replace, statusBadge, usd, errorBox, every, announce, problem } from "./dom.js";
import { VirtualList } from "./vlist.js";

const DIAGNOSTICS_MS = 3000;
const YIELD_MS = 12;

/** The same path and query on this page's origin (links carry the API's configured base). */
function sameOrigin(client, url) {
  const u = new URL(url);
  return new URL(u.pathname + u.search, `${client.baseUrl}/`).href;
}

function describe(e) {
  switch (e.type) {
    case "token": return JSON.stringify(e.text);
    case "tool_start": return `${e.name}(${JSON.stringify(e.args)})`;
    case "tool_end": return `${e.name ?? e.call_id} ${e.ok ? "ok" : "failed"}`;
    case "resumed": return `resumed: attempt ${e.attempt}`;
    case "usage": return `${e.input_tokens ?? "?"} in / ${e.output_tokens ?? "?"} out, ${usd(e.cost_usd)}`;
    case "error": return `${e.code}: ${e.message}`;
    case "done": return "done";
    default: return JSON.stringify(e).slice(0, 200);
  }
}

export async function render(ctx, main, [runId]) {
  const { client, me, signal } = ctx;
  // An operator may open any user's run: read through /ops, streamed with a token the
  // operator's key mints for it (`GET /ops/runs/{id}/events_url`); no cancel, no diagnostics.
  let foreign = false;
  let run;
  const opsPath = `/ops/runs/${encodeURIComponent(runId)}`;
  const fetchRun = async () => (foreign
    ? (await client.request("GET", opsPath, { signal })).body
    : client.get(runId, { signal }));
  try {
    run = await fetchRun();
  } catch (err) {
    if (!(err instanceof NotFoundError && me.operator)) {
      main.append(h("h1", {}, "Run"), errorBox(err.status === 404
        ? { ...err, detail: "no such run (or not yours)" } : err));
      return;
    }
    foreign = true;
    run = await fetchRun();
  }
  const freshEventsUrl = async () => sameOrigin(client, foreign
    ? (await client.request("GET", `${opsPath}/events_url`, { signal })).body.events_url
    : (await client.eventsUrl(runId, { signal })).events_url);

  // -- the page's state, read by the render loop and by tests --------------------------------
  const view = { runId, events: [], tokens: [], tools: new Map(), reconnects: 0,
    connection: "connecting", run };
  ctx.state.run = view;

  const status = h("span", { id: "run-status" }, statusBadge(run.status));
  const conn = h("span", { id: "connection", class: "conn", role: "status" }, "connecting");
  const cancel = h("button", { type: "button", class: "danger", id: "cancel", hidden: foreign,
    disabled: TERMINAL_STATUSES.has(run.status), onclick: async () => {
      cancel.disabled = true;
      try {
        const a = await client.cancel(runId);
        announce(`run ${a.status}`);
      } catch (err) { failure.replaceChildren(errorBox(err)); }
    } }, "Cancel run");
  const output = h("div", { id: "output", class: "output", tabindex: 0,
    "aria-label": "Output as it streams" });
  const timeline = h("ol", { id: "timeline", class: "timeline" });
  const listBox = h("div", { id: "events", class: "vlist", role: "list", tabindex: 0,
    "aria-label": "Events" });
  const summary = h("dl", { id: "summary", class: "kv" });
  const diag = h("dl", { id: "diagnostics", class: "kv" });
  const diagPanel = h("section", { class: "panel", "aria-labelledby": "diag-h" },
    h("h2", { id: "diag-h" }, "Diagnostics"), diag);
  const failure = h("div");
  const final = h("div", { id: "final" });

  // (DOM's own append writes a null child as the text "null": leave absent parts out.)
  main.append(...[
    h("h1", {}, "Run ", h("span", { class: "mono" }, runId)),
    foreign ? h("p", { id: "owner" }, `Owned by ${run.user_id}: an operator's view.`) : null,
    h("div", { class: "row" }, status, conn, cancel,
      run.thread_id ? h("a", { href: `#/threads/${encodeURIComponent(run.thread_id)}` },
        `thread ${run.thread_id}`) : null),
    failure,
    h("section", { class: "panel", "aria-labelledby": "sum-h" },
      h("h2", { id: "sum-h" }, "Usage and cost"), summary),
    final,
    h("h2", {}, "Output"), output,
    h("h2", {}, "Tool calls"), timeline,
    h("h2", {}, "Events"), listBox,
    diagPanel].filter((part) => part !== null));

  const list = new VirtualList(listBox, { renderRow: (i, el) => {
    const e = view.events[i];
    el.className = `vrow ev-${e.type}`;
    el.append(h("span", { class: "seq" }, `#${e.seq}`), `${e.type} `, describe(e));
  } });

  function showSummary(r) {
    replace(summary,
      h("dt", {}, "Agent"), h("dd", {}, r.agent),
      h("dt", {}, "Attempts"), h("dd", { id: "attempts" }, String(r.attempts)),
      h("dt", {}, "Cost"), h("dd", { id: "cost" }, usd(r.cost_usd)),
      h("dt", {}, "Usage"), h("dd", { class: "mono" }, JSON.stringify(r.usage ?? {})),
      h("dt", {}, "Input"), h("dd", {}, String(r.input).slice(0, 500)),
      h("dt", {}, "Params"), h("dd", { class: "mono" }, JSON.stringify(r.params ?? {})));
    status.replaceChildren(statusBadge(r.status));
    cancel.disabled = TERMINAL_STATUSES.has(r.status);
    diagPanel.hidden = foreign || r.status !== "running";
    if (r.status === "succeeded") {
      replace(final, h("section", { class: "panel" }, h("h2", {}, "Final output"),
        h("pre", { class: "output", id: "final-output" }, typeof r.output === "string"
          ? r.output : JSON.stringify(r.output, null, 2))));
    } else if (r.error) {
      replace(final, h("section", { class: "panel" }, h("h2", {}, "Error"),
        h("p", { class: "error", id: "run-error" }, `${r.error.code ?? "error"}: ${r.error.message ?? ""}`)));
    }
  }
  showSummary(run);

  // -- batched rendering: at most once per frame however fast events arrive ------------------
  let drawn = 0;
  let scheduled = false;
  function paint() {
    scheduled = false;
    const fresh = view.events.slice(drawn);
    drawn = view.events.length;
    let text = "";
    for (const e of fresh) {
      if (e.type === "token") text += e.text;
      else if (e.type === "tool_start") {
        const li = h("li", {}, h("strong", {}, e.name), " ",
          h("code", {}, JSON.stringify(e.args).slice(0, 300)), " ",
          h("span", { class: "pending" }, "running…"));
        view.tools.set(e.call_id, { li, at: e._at });
        timeline.append(li);
      } else if (e.type === "tool_end") {
        const t = view.tools.get(e.call_id);
        if (t) {
          const ms = Math.max(0, e._at - t.at);
          t.li.querySelector(".pending").replaceWith(h("span", { class: e.ok ? "ok" : "bad" },
            `${e.ok ? "ok" : "error"} · ${ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`}`,
            e.error ? ` · ${JSON.stringify(e.error).slice(0, 200)}` : ""));
        }
      } else if (e.type === "resumed") {
        timeline.append(h("li", { class: "ev-resumed" }, `resumed here: attempt ${e.attempt}`));
      }
    }
    if (text) output.append(text);
    list.setCount(view.events.length);
  }
  const schedule = () => { if (!scheduled) { scheduled = true; requestAnimationFrame(paint); } };

  every(DIAGNOSTICS_MS, async () => {
    if (diagPanel.hidden) return;
    const d = await client.diagnostics(runId, { signal });
    replace(diag, Object.entries(d).filter(([k]) => k !== "run_id").flatMap(([k, v]) =>
      [h("dt", {}, k), h("dd", { class: "mono" }, typeof v === "object" ? JSON.stringify(v) : String(v))]));
  }, signal);

  // -- the stream ------------------------------------------------------------------------------
  const onState = (s, info) => {
    view.connection = s;
    if (s === "reconnecting" && info.error) view.reconnects += 1;
    const label = { connecting: "connecting", open: "live", closed: "ended",
      reconnecting: `reconnecting (attempt ${info.attempt})` }[s];
    conn.textContent = view.reconnects && s !== "reconnecting"
      ? `${label} · reconnected ${view.reconnects}×` : label;
    conn.className = `conn conn-${s}`;
    if (s === "reconnecting" && info.error) announce("connection lost, reconnecting");
  };
  let slice = performance.now();
  try {
    for await (const e of client.stream(runId, {
      signal,
      onState,
      eventsUrl: foreign ? await freshEventsUrl() : sameOrigin(client, run.events_url),
      refreshEventsUrl: freshEventsUrl,
    })) {
      e._at = Date.now();
      view.events.push(e);
      if (e.type === "token") view.tokens.push(e.text);
      if (e.type === "start" || e.type === "resumed") {
        status.replaceChildren(statusBadge("running"));
        diagPanel.hidden = foreign;
      }
      schedule();
      // A replay arrives faster than it can be shown: give the browser a turn every few ms,
      // so that it paints and answers input however long the run.
      if (performance.now() - slice > YIELD_MS) {
        await new Promise((resolve) => setTimeout(resolve, 0));
        slice = performance.now();
      }
    }
    view.run = await fetchRun();
    showSummary(view.run);
    view.finished = true;
    announce(`run ${view.run.status}`);
  } catch (err) {
    if (!signal.aborted) failure.replaceChildren(h("p", { class: "error", role: "alert" }, problem(err)));
  }
}
