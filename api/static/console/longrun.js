// longrun's JavaScript client: one ES module, no dependencies, for browsers and Node 20+.
//
// It speaks the public HTTP API (README, "HTTP") with the platform's own `fetch`. A run's
// event stream is read with `fetch` too, not `EventSource`, so that one code path serves Node
// and browsers, sends `Last-Event-ID` itself on every reconnect, and tells the run's own
// `error` event from a dropped connection. The stream resumes after the last event it handed
// out, and drops anything at or below it, so a caller sees each seq exactly once, in order.
//
// In a browser the stream can use the run-scoped token of an `events_url` instead of the API
// key (`stream(id, { eventsUrl, refreshEventsUrl })`): the key then stays with whoever minted
// the URL. Types: longrun.d.ts beside this file (checked by `tsc` in tests/js).

const TERMINAL_EVENTS = new Set(["done", "error", "cancelled"]);
export const TERMINAL_STATUSES = new Set(["succeeded", "failed", "cancelled"]);

/** Every failure the API answers: `status`, `code` (the JSON `error`), `detail`, `requestId`. */
export class LongrunError extends Error {
  constructor(message, { status = 0, code = "error", detail = message, requestId = null,
    retryAfter = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}
export class BadRequestError extends LongrunError {}
export class UnauthorizedError extends LongrunError {}
export class NotFoundError extends LongrunError {}
export class ConflictError extends LongrunError {}
export class RateLimitedError extends LongrunError {}
export class UnavailableError extends LongrunError {}
export class ServerError extends LongrunError {}
/** The request never got an answer (connection refused or cut, DNS, timeout). */
export class NetworkError extends LongrunError {}

const BY_STATUS = { 400: BadRequestError, 401: UnauthorizedError, 404: NotFoundError,
  409: ConflictError, 413: BadRequestError, 422: BadRequestError, 429: RateLimitedError,
  503: UnavailableError };

function retryAfterSeconds(headers) {
  const raw = headers.get("retry-after");
  if (raw === null) return null;
  const n = Number(raw);
  if (Number.isFinite(n)) return Math.max(0, n);
  const when = Date.parse(raw);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

/** The typed error for a non-2xx answer (its body already read as `body`). */
export function errorFromAnswer(status, headers, body) {
  const Kind = BY_STATUS[status] ?? (status >= 500 ? ServerError : LongrunError);
  const code = (body && typeof body.error === "string") ? body.error : `http_${status}`;
  const detail = (body && body.detail !== undefined)
    ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
    : `HTTP ${status}`;
  const requestId = (body && body.request_id) || headers.get("x-request-id");
  return new Kind(`${code}: ${detail}`, {
    status, code, detail, requestId, retryAfter: retryAfterSeconds(headers),
  });
}

async function readJson(resp) {
  const text = await resp.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return { detail: text }; }
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  if (signal?.aborted) { reject(signal.reason); return; }
  const t = setTimeout(() => { signal?.removeEventListener("abort", onAbort); resolve(); }, ms);
  const onAbort = () => { clearTimeout(t); reject(signal.reason); };
  signal?.addEventListener("abort", onAbort, { once: true });
});

/** Finds line breaks (CRLF, LF or CR) in one buffer, each search from where the last ended:
 * linear in the buffer however many lines it holds. */
function breaks(s) {
  let n = -1;
  let r = -1;
  const find = (ch, from) => {
    const i = s.indexOf(ch, from);
    return i < 0 ? Infinity : i;
  };
  return (from) => {
    if (n < from) n = find("\n", from);
    if (r < from) r = find("\r", from);
    const at = Math.min(n, r);
    return at === Infinity ? -1 : at;
  };
}

/**
 * Parses a text/event-stream body into frames `{id, event, data, retry}` (the WHATWG rules:
 * fields per line, a blank line ends a frame, comments and frames without data are skipped).
 */
export async function* parseSse(body, onBytes) {
  const decoder = new TextDecoder();
  const reader = body.getReader();
  let buf = "";
  let frame = { id: null, event: "message", data: [], retry: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (!done) {
        onBytes?.();
        buf += decoder.decode(value, { stream: true });
      }
      let pos = 0;
      const nextBreak = breaks(buf);
      for (;;) {
        const nl = nextBreak(pos);
        // A CR ending the buffer may be the first half of a CRLF: wait for the next bytes.
        if (nl < 0 || (!done && buf[nl] === "\r" && nl + 1 === buf.length)) break;
        const line = buf.slice(pos, nl);
        pos = nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1);
        if (line === "") {
          if (frame.data.length) yield { ...frame, data: frame.data.join("\n") };
          else if (frame.retry !== null) yield { ...frame, data: null };
          frame = { id: null, event: "message", data: [], retry: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") frame.data.push(val);
        else if (field === "event") frame.event = val;
        else if (field === "id" && !val.includes("\0")) frame.id = val;
        else if (field === "retry" && /^\d+$/.test(val)) frame.retry = Number(val);
      }
      buf = buf.slice(pos);
      if (done) return; // an unterminated last frame is dropped, as the standard says
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function withQuery(url, params) {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u.toString();
}

function submitBody(req) {
  const body = { input: req.input };
  if (req.agent != null) body.agent = req.agent;
  if (req.params != null) body.params = req.params;
  if (req.threadId != null) body.thread_id = req.threadId;
  if (req.threadMode != null) body.thread_mode = req.threadMode;
  if (req.metadata != null) body.metadata = req.metadata;
  // A delayed start: seconds from now, or a time (a Date, or RFC 3339 text with its offset).
  if (req.startAfter != null) body.start_after = req.startAfter;
  if (req.startAt != null) {
    body.start_at = req.startAt instanceof Date ? req.startAt.toISOString() : req.startAt;
  }
  if (req.priority != null) body.priority = req.priority;
  return body;
}

/** A client of one longrun API. */
export class Client {
  /**
   * @param {object} options `baseUrl` (default: the page's origin in a browser), `apiKey`
   * (omit in a page that only streams with `events_url`s), `fetch`, `headers`.
   */
  constructor({ baseUrl, apiKey = null, fetch: f, headers = {} } = {}) {
    const origin = globalThis.location?.origin;
    this.baseUrl = String(baseUrl ?? origin ?? "").replace(/\/+$/, "");
    if (!this.baseUrl) throw new TypeError("baseUrl is required outside a browser");
    this.apiKey = apiKey;
    this.headers = headers;
    this._fetch = f ?? globalThis.fetch.bind(globalThis);
    this._waitRoute = true; // false once the server said it has no /wait route
  }

  _headers(extra = {}) {
    const h = { ...this.headers, ...extra };
    if (this.apiKey) h.Authorization = `Bearer ${this.apiKey}`;
    return h;
  }

  /** One request; JSON in, `{status, headers, body}` out; a typed error for non-2xx. */
  async request(method, path, { json, query, headers, signal } = {}) {
    const url = withQuery(this.baseUrl + path, query ?? {});
    const init = { method, headers: this._headers(headers), signal };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    }
    let resp;
    try {
      resp = await this._fetch(url, init);
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw new NetworkError(`network: ${err?.message ?? err}`, { code: "network", cause: err });
    }
    const body = resp.status === 204 ? null : await readJson(resp);
    if (!resp.ok) {
      throw errorFromAnswer(resp.status, resp.headers, body);
    }
    return { status: resp.status, headers: resp.headers, body };
  }

  /** POST /runs: 202 with `run_id`, `status`, `events_url`... */
  async create(req, { idempotencyKey, signal } = {}) {
    const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    return (await this.request("POST", "/runs", { json: submitBody(req), headers, signal })).body;
  }

  async get(runId, { signal } = {}) {
    return (await this.request("GET", `/runs/${encodeURIComponent(runId)}`, { signal })).body;
  }

  /** One page, newest first: `{runs, next_cursor}`. */
  async list({ limit, cursor, status, threadId, signal } = {}) {
    const query = { limit, cursor, status, thread_id: threadId };
    return (await this.request("GET", "/runs", { query, signal })).body;
  }

  /** Every run matching the filters, page after page (keyset cursors). */
  async *listAll(options = {}) {
    let cursor = options.cursor;
    do {
      const page = await this.list({ ...options, cursor });
      yield* page.runs;
      cursor = page.next_cursor;
    } while (cursor);
  }

  async cancel(runId, { signal } = {}) {
    const path = `/runs/${encodeURIComponent(runId)}/cancel`;
    return (await this.request("POST", path, { signal })).body;
  }

  /** A fresh `events_url` (run-scoped token) for a page that streams without the key. */
  async eventsUrl(runId, { signal } = {}) {
    const path = `/runs/${encodeURIComponent(runId)}/events_url`;
    return (await this.request("GET", path, { signal })).body;
  }

  async diagnostics(runId, { signal } = {}) {
    const path = `/runs/${encodeURIComponent(runId)}/diagnostics`;
    return (await this.request("GET", path, { signal })).body;
  }

  async threadMessages(threadId, { after, limit, signal } = {}) {
    const path = `/threads/${encodeURIComponent(threadId)}/messages`;
    return (await this.request("GET", path, { query: { after, limit }, signal })).body;
  }

  /**
   * POST /schedules: `{cron, timezone, input, agent?, params?, threadId?, metadata?}`; 201 with
   * the schedule (`schedule_id`, `next_run_at`, ...). Each tick of `cron` in `timezone` makes
   * one run. Sent once: no retry could tell a lost answer from a refused create.
   */
  async createSchedule({ cron, timezone = "UTC", input, agent, params, threadId, metadata }, { signal } = {}) {
    const json = { cron, timezone, input, agent, params, thread_id: threadId, metadata };
    for (const k of Object.keys(json)) if (json[k] === undefined || json[k] === null) delete json[k];
    return (await this.request("POST", "/schedules", { json, signal })).body;
  }

  /** One page of your schedules, newest first: `{schedules, next_cursor}`. */
  async listSchedules({ limit, cursor, signal } = {}) {
    return (await this.request("GET", "/schedules", { query: { limit, cursor }, signal })).body;
  }

  async getSchedule(scheduleId, { signal } = {}) {
    return (await this.request("GET", `/schedules/${encodeURIComponent(scheduleId)}`, { signal })).body;
  }

  /** DELETE /schedules/{id}: it ticks no more; the runs it made stay. */
  async deleteSchedule(scheduleId, { signal } = {}) {
    await this.request("DELETE", `/schedules/${encodeURIComponent(scheduleId)}`, { signal });
  }

  /** The runs a schedule made, newest tick first: `{schedule_id, runs, next_cursor}`. */
  async scheduleRuns(scheduleId, { limit, cursor, signal } = {}) {
    const path = `/schedules/${encodeURIComponent(scheduleId)}/runs`;
    return (await this.request("GET", path, { query: { limit, cursor }, signal })).body;
  }

  /**
   * The run once it has ended. Long-polls `GET /runs/{id}/wait?timeout=S` (200: ended; 202:
   * not yet, ask again after Retry-After); a server without that route (404 not_found for a
   * run that exists) is polled with `GET /runs/{id}` instead. `timeout` (seconds, default
   * none) bounds the whole wait: a NetworkError-free `LongrunError` code `wait_timeout`.
   */
  async wait(runId, { timeout = null, poll = 30, pollInterval = 1, signal } = {}) {
    const deadline = timeout === null ? Infinity : Date.now() + timeout * 1000;
    const left = () => (deadline - Date.now()) / 1000;
    for (;;) {
      if (left() <= 0) {
        throw new LongrunError("wait_timeout: the run had not ended", { code: "wait_timeout" });
      }
      const slice = Math.max(1, Math.min(poll, Math.ceil(left())));
      let pause = pollInterval;
      if (this._waitRoute) {
        const path = `/runs/${encodeURIComponent(runId)}/wait`;
        try {
          const a = await this.request("GET", path, { query: { timeout: slice }, signal });
          if (a.status === 200 && TERMINAL_STATUSES.has(a.body?.status)) return a.body;
          pause = retryAfterSeconds(a.headers) ?? 0;
        } catch (err) {
          if (!(err instanceof NotFoundError)) throw err;
          await this.get(runId, { signal }); // a 404 for the run itself is the caller's
          this._waitRoute = false;
          continue;
        }
      } else {
        const run = await this.get(runId, { signal });
        if (TERMINAL_STATUSES.has(run.status)) return run;
      }
      if (pause > 0) await sleep(Math.min(pause, Math.max(left(), 0)) * 1000, signal);
    }
  }

  /**
   * The run's events, each once and in order, resuming after the last one on every drop;
   * ends after the terminal event (`done`, `error` or `cancelled`). Each event is the parsed
   * JSON (`seq`, `type`, ...).
   *
   * options: `lastEventId` (resume after it), `eventsUrl` (stream with its token, no key),
   * `refreshEventsUrl` (async () => url, when that token expires; default: ask the API with
   * the key), `signal`, `onState(s)` with s one of `connecting`, `open`, `reconnecting`,
   * `closed` plus `{attempt, lastEventId, error}`, `idleTimeout` (s without a byte before the
   * connection is taken for dead; the server pings every 15 s), `maxBackoff` (s).
   */
  async *stream(runId, options = {}) {
    const { signal, onState = () => {}, idleTimeout = 45, maxBackoff = 5 } = options;
    let last = options.lastEventId == null ? 0 : Number(options.lastEventId);
    let eventsUrl = options.eventsUrl ?? null;
    const refresh = options.refreshEventsUrl
      ?? (async () => (await this.eventsUrl(runId, { signal })).events_url);
    let attempt = 0;
    let retryMs = 250;
    for (;;) {
      if (signal?.aborted) throw signal.reason;
      onState(attempt === 0 ? "connecting" : "reconnecting", { attempt, lastEventId: last });
      const conn = new AbortController();
      const onAbort = () => conn.abort(signal.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      let idle;
      const touch = () => {
        clearTimeout(idle);
        idle = setTimeout(() => conn.abort(new Error("idle")), idleTimeout * 1000);
      };
      let failure = null;
      let expired = false;
      try {
        let url;
        const headers = { Accept: "text/event-stream" };
        if (eventsUrl) {
          url = withQuery(eventsUrl, { last_event_id: last || null });
        } else {
          url = `${this.baseUrl}/runs/${encodeURIComponent(runId)}/events`;
          Object.assign(headers, this._headers());
          if (last) headers["Last-Event-ID"] = String(last);
        }
        touch();
        const resp = await this._fetch(url, { headers, signal: conn.signal, cache: "no-store" });
        if (resp.status === 204) { onState("closed", { attempt, lastEventId: last }); return; }
        if (!resp.ok) {
          const err = errorFromAnswer(resp.status, resp.headers, await readJson(resp));
          if (err.code === "stream_token_expired") expired = true;
          else if (resp.status === 429 || resp.status >= 500) failure = err;
          else throw err;
        } else {
          onState("open", { attempt, lastEventId: last });
          for await (const frame of parseSse(resp.body, touch)) {
            if (frame.retry !== null) retryMs = frame.retry;
            if (frame.event === "stream_token_expired") { expired = true; break; }
            if (frame.data === null || frame.id === null) continue; // control frames
            const seq = Number(frame.id);
            if (!(seq > last)) continue; // already handed out
            if (seq !== last + 1) { // a hole: ask again from the last event we have
              failure = new NetworkError(`stream: event ${last + 1} missing`, { code: "gap" });
              break;
            }
            const event = JSON.parse(frame.data);
            last = seq;
            attempt = 0;
            yield event;
            if (TERMINAL_EVENTS.has(event.type)) {
              onState("closed", { attempt, lastEventId: last });
              return;
            }
          }
          if (!expired && !failure) failure = new NetworkError(
            "the stream closed before the run ended", { code: "stream_dropped" });
        }
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (err instanceof LongrunError) throw err;
        failure = new NetworkError(`stream: ${err?.message ?? err}`, { code: "network",
          cause: err });
      } finally {
        clearTimeout(idle);
        signal?.removeEventListener("abort", onAbort);
        conn.abort(new Error("stream connection done"));
      }
      if (expired) {
        eventsUrl = await refresh();
        continue;
      }
      attempt += 1;
      onState("reconnecting", { attempt, lastEventId: last, error: failure });
      const hinted = failure?.retryAfter != null ? failure.retryAfter * 1000 : 0;
      const backoff = Math.min(retryMs * 2 ** Math.min(attempt - 1, 6), maxBackoff * 1000);
      await sleep(Math.max(hinted, backoff * (0.5 + Math.random() / 2)), signal);
    }
  }

  /** Submit a run, then follow it: yields `{run}` once (the 202's body), then its events. */
  async *createAndStream(req, options = {}) {
    const run = await this.create(req, options);
    yield { type: "created", run };
    yield* this.stream(run.run_id, { ...options, eventsUrl: options.useToken ? run.events_url
      : options.eventsUrl });
  }
}
