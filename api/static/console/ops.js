// Operations (operators): the cluster snapshot `longrun status` prints (`GET /ops/status`),
// workers with in-flight and heartbeat, dead letters with retry and drop, the kill switch
// behind a confirmation, and a live chart of backlog and throughput over the last minutes
// (throughput: runs ended per second, the difference of the `runs_finished` counters between
// two reads).
import { h, replace, errorBox, every, announce } from "./dom.js";

const REFRESH_MS = 2000;
const WINDOW = 150; // points: five minutes at one read every two seconds

function figure(label, value, id) {
  return h("div", { class: "fig" }, h("span", { class: "n", id }, String(value ?? "-")),
    h("span", { class: "k" }, label));
}

function chart(points) {
  const W = 600, H = 140, pad = 4;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const last = points.at(-1);
  svg.setAttribute("aria-label", last
    ? `Backlog ${last.backlog}, throughput ${last.rate.toFixed(1)} runs per second` : "No data yet");
  for (const [key, colour] of [["backlog", "#0a58ca"], ["rate", "#116329"]]) {
    const max = Math.max(1, ...points.map((p) => p[key]));
    const xy = points.map((p, i) => `${pad + (i / (WINDOW - 1)) * (W - 2 * pad)},` +
      `${H - pad - (p[key] / max) * (H - 2 * pad)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", xy.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "2");
    svg.append(line);
  }
  return svg;
}

export async function render(ctx, main) {
  const { client, me, signal } = ctx;
  if (!me.operator) {
    main.append(h("h1", {}, "Operations"), h("p", {}, "This needs an operator's key."));
    return;
  }
  const points = [];
  let previous = null;
  const figures = h("div", { class: "grid", id: "figures" });
  const switchBox = h("div", { class: "row", id: "switch" });
  const chartBox = h("div", { id: "chart" });
  const workers = h("tbody", { id: "workers" });
  const letters = h("tbody", { id: "dead-letters" });
  const failure = h("div");
  const dialog = h("dialog", { id: "confirm", "aria-labelledby": "confirm-h" });

  main.append(h("h1", {}, "Operations"), failure, switchBox, figures,
    h("h2", {}, "Backlog and throughput"),
    h("p", { class: "legend" }, h("span", { class: "b" }, "— backlog"),
      h("span", { class: "t" }, "— runs ended per second")), chartBox,
    h("h2", {}, "Workers"),
    h("table", { "aria-label": "Workers" }, h("thead", {}, h("tr", {},
      ["Worker", "State", "In flight", "Heartbeat"].map((c) => h("th", { scope: "col" }, c)))),
    workers),
    h("h2", {}, "Dead letters"),
    h("table", { "aria-label": "Dead letters" }, h("thead", {}, h("tr", {},
      ["Run", "Reason", "Deliveries", "Age", "Run status", "Actions"].map((c) =>
        h("th", { scope: "col" }, c)))), letters),
    dialog);

  function confirm(question, yes) {
    return new Promise((resolve) => {
      replace(dialog, h("h2", { id: "confirm-h" }, question),
        h("form", { method: "dialog", class: "row" },
          h("button", { value: "no", class: "secondary", id: "confirm-no" }, "Keep as is"),
          h("button", { value: "yes", class: "danger", id: "confirm-yes" }, yes)));
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
      dialog.showModal();
    });
  }

  async function act(path, json, done) {
    try {
      await client.request("POST", path, { json });
      announce(done);
      await refresh();
    } catch (err) { replace(failure, errorBox(err)); }
  }

  async function refresh() {
    const s = (await client.request("GET", "/ops/status", { signal })).body;
    const ended = Object.values(s.runs_finished ?? {}).reduce((a, b) => a + b, 0);
    const now = Date.now();
    const rate = previous ? Math.max(0, (ended - previous.ended) / ((now - previous.at) / 1000)) : 0;
    previous = { ended, at: now };
    points.push({ backlog: s.backlog, rate });
    if (points.length > WINDOW) points.shift();
    replace(figures,
      figure("backlog", s.backlog, "fig-backlog"), figure("scheduled", s.scheduled ?? 0),
      figure("waiting (lag)", s.lag ?? s.waiting),
      figure("pending", s.pending), figure("oldest queued", s.oldest_waiting_age_seconds == null
        ? "-" : `${s.oldest_waiting_age_seconds.toFixed(1)} s`),
      figure("in flight", s.in_flight), figure("workers alive", s.workers_alive, "fig-workers"),
      figure("dead letters", s.dead_letters, "fig-dlq"),
      figure("throughput", `${rate.toFixed(1)}/s`));
    replace(chartBox, chart(points));
    replace(switchBox, s.paused
      ? [h("p", { id: "paused", role: "status" }, h("strong", {}, "Submits paused: "), s.paused),
        h("button", { type: "button", id: "resume", onclick: async () => {
          if (await confirm("Accept new runs again?", "Resume submits")) {
            await act("/ops/resume", undefined, "submits resumed");
          }
        } }, "Resume submits")]
      : [h("p", { id: "paused", role: "status" }, "Accepting submits."),
        h("button", { type: "button", class: "danger", id: "pause", onclick: async () => {
          if (await confirm("Refuse every new run (503 paused) until resumed?", "Pause submits")) {
            await act("/ops/pause", { reason: `paused from the console by ${me.user}` },
              "submits paused");
          }
        } }, "Pause submits…")]);
    replace(workers, s.workers.length ? s.workers.map((w) => h("tr", {},
      h("td", { class: "mono" }, w.name), h("td", {}, w.alive ? "alive" : "dead"),
      h("td", {}, `${w.in_flight}/${w.concurrency}`),
      h("td", {}, `${Number(w.last_heartbeat_age_seconds).toFixed(1)} s ago`)))
      : h("tr", {}, h("td", { colspan: 4 }, "No live workers.")));
    const dlq = (await client.request("GET", "/ops/dlq", { signal })).body.dead_letters;
    replace(letters, dlq.length ? dlq.map((d) => h("tr", {},
      h("td", {}, h("a", { href: `#/runs/${d.run_id}`, class: "mono" }, d.run_id)),
      h("td", {}, d.reason), h("td", {}, String(d.deliveries)), h("td", {}, `${d.age_seconds} s`),
      h("td", {}, d.run_status ?? "-"),
      h("td", {}, h("button", { type: "button", class: "secondary",
        "aria-label": `retry ${d.run_id}`, onclick: () => act(`/ops/dlq/${d.entry_id}/retry`,
          undefined, "requeued") }, "Retry"), " ",
      h("button", { type: "button", class: "secondary", "aria-label": `drop ${d.run_id}`,
        onclick: () => act(`/ops/dlq/${d.entry_id}/drop`, undefined, "dropped") }, "Drop"))))
      : h("tr", {}, h("td", { colspan: 6 }, "No dead letters.")));
    replace(failure);
  }

  await refresh();
  every(REFRESH_MS, refresh, signal);
}
