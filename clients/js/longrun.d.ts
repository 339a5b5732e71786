// Types of longrun.js (the public HTTP API's shapes; see the README's "HTTP" and "Events").

export type RunStatus =
  | "queued"
  | "running"
  | "waiting"
  | "succeeded"
  | "failed"
  | "cancelled"
  | (string & {});

export interface Run {
  run_id: string;
  status: RunStatus;
  agent: string;
  thread_id: string | null;
  input: string;
  params: Record<string, unknown>;
  metadata: Record<string, unknown>;
  output: unknown;
  error: { code?: string; message?: string; [k: string]: unknown } | null;
  usage: Record<string, unknown>;
  cost_usd: number;
  attempts: number;
  last_seq: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string | null;
  /** A delayed run is queued, not started, before this. */
  start_at?: string | null;
  url?: string;
  events_url?: string;
}

export interface Submitted {
  run_id: string;
  status: RunStatus;
  agent: string;
  thread_id: string | null;
  created_at: string;
  start_at?: string | null;
  url: string;
  events_url: string;
}

export interface RunPage {
  runs: Run[];
  next_cursor: string | null;
}

export interface SubmitRequest {
  input: string;
  agent?: string | null;
  params?: Record<string, unknown> | null;
  threadId?: string | null;
  threadMode?: "enqueue" | "reject" | "interrupt" | null;
  metadata?: Record<string, unknown> | null;
  /** Start this many seconds from now (not with `startAt`). */
  startAfter?: number | null;
  /** Start at this time: a Date, or RFC 3339 text with its offset (not with `startAfter`). */
  startAt?: Date | string | null;
  priority?: "high" | "normal" | "low" | null;
}

interface EventBase {
  seq: number;
}
export type RunEvent = EventBase &
  (
    | { type: "start"; [k: string]: unknown }
    | { type: "token"; text: string }
    | { type: "tool_start"; name: string; args: unknown; call_id: string }
    | { type: "tool_end"; call_id: string; ok: boolean; [k: string]: unknown }
    | { type: "usage"; [k: string]: unknown }
    | { type: "resumed"; attempt: number }
    | { type: "notice"; [k: string]: unknown }
    | {
        type: "interrupt";
        interrupt_id: string;
        payload: unknown;
        timeout_seconds?: number;
        on_timeout?: "default" | "error";
      }
    | { type: "done"; output: unknown }
    | { type: "error"; code: string; message: string }
    | { type: "cancelled"; [k: string]: unknown }
  );

export type StreamState = "connecting" | "open" | "reconnecting" | "closed";
export interface StreamStateInfo {
  attempt: number;
  lastEventId: number;
  error?: LongrunError | null;
}

export interface StreamOptions {
  lastEventId?: number | string | null;
  eventsUrl?: string | null;
  refreshEventsUrl?: () => Promise<string>;
  signal?: AbortSignal;
  onState?: (state: StreamState, info: StreamStateInfo) => void;
  idleTimeout?: number;
  maxBackoff?: number;
}

export interface WaitOptions {
  timeout?: number | null;
  poll?: number;
  pollInterval?: number;
  signal?: AbortSignal;
}

export interface ClientOptions {
  baseUrl?: string;
  apiKey?: string | null;
  fetch?: typeof fetch;
  headers?: Record<string, string>;
}

interface ErrorInit {
  status?: number;
  code?: string;
  detail?: string;
  requestId?: string | null;
  retryAfter?: number | null;
  cause?: unknown;
}

export class LongrunError extends Error {
  constructor(message: string, init?: ErrorInit);
  status: number;
  code: string;
  detail: string;
  requestId: string | null;
  retryAfter: number | null;
}
export class BadRequestError extends LongrunError {}
export class UnauthorizedError extends LongrunError {}
export class NotFoundError extends LongrunError {}
export class ConflictError extends LongrunError {}
export class RateLimitedError extends LongrunError {}
export class UnavailableError extends LongrunError {}
export class ServerError extends LongrunError {}
export class NetworkError extends LongrunError {}

export const TERMINAL_STATUSES: Set<string>;

export function errorFromAnswer(status: number, headers: Headers, body: unknown): LongrunError;

export interface SseFrame {
  id: string | null;
  event: string;
  data: string | null;
  retry: number | null;
}
export function parseSse(
  body: ReadableStream<Uint8Array>,
  onBytes?: () => void,
): AsyncGenerator<SseFrame, void, undefined>;

export interface Answer<T> {
  status: number;
  headers: Headers;
  body: T;
}


/** `POST /schedules`: a cadence and the run each of its ticks makes. */
export interface ScheduleRequest {
  cron: string;
  timezone?: string;
  input: string;
  agent?: string | null;
  params?: Record<string, unknown> | null;
  threadId?: string | null;
  metadata?: Record<string, unknown> | null;
}

export interface Schedule {
  schedule_id: string;
  cron: string;
  timezone: string;
  agent: string;
  input: string;
  params: Record<string, unknown>;
  metadata: Record<string, unknown>;
  thread_id: string | null;
  next_run_at: string;
  last_run_at: string | null;
  runs_made: number;
  created_at: string;
  url: string;
}
export class Client {
  constructor(options?: ClientOptions);
  baseUrl: string;
  apiKey: string | null;
  request<T = unknown>(
    method: string,
    path: string,
    options?: {
      json?: unknown;
      query?: Record<string, string | number | null | undefined>;
      headers?: Record<string, string>;
      signal?: AbortSignal;
    },
  ): Promise<Answer<T>>;
  create(
    req: SubmitRequest,
    options?: { idempotencyKey?: string; signal?: AbortSignal },
  ): Promise<Submitted>;
  get(runId: string, options?: { signal?: AbortSignal }): Promise<Run>;
  list(options?: {
    limit?: number;
    cursor?: string | null;
    status?: RunStatus | null;
    threadId?: string | null;
    signal?: AbortSignal;
  }): Promise<RunPage>;
  listAll(options?: {
    limit?: number;
    cursor?: string | null;
    status?: RunStatus | null;
    threadId?: string | null;
  }): AsyncGenerator<Run, void, undefined>;
  cancel(
    runId: string,
    options?: { signal?: AbortSignal },
  ): Promise<{ run_id: string; status: "cancelled" | "cancelling" }>;
  eventsUrl(
    runId: string,
    options?: { signal?: AbortSignal },
  ): Promise<{ run_id: string; events_url: string; expires_at: number }>;
  diagnostics(runId: string, options?: { signal?: AbortSignal }): Promise<Record<string, unknown>>;
  threadMessages(
    threadId: string,
    options?: { after?: number; limit?: number; signal?: AbortSignal },
  ): Promise<{ thread_id: string; messages: Record<string, unknown>[]; next_after: number | null }>;
  createSchedule(
    req: ScheduleRequest,
    options?: { signal?: AbortSignal },
  ): Promise<Schedule>;
  listSchedules(options?: {
    limit?: number;
    cursor?: string | null;
    signal?: AbortSignal;
  }): Promise<{ schedules: Schedule[]; next_cursor: string | null }>;
  getSchedule(scheduleId: string, options?: { signal?: AbortSignal }): Promise<Schedule>;
  deleteSchedule(scheduleId: string, options?: { signal?: AbortSignal }): Promise<void>;
  scheduleRuns(
    scheduleId: string,
    options?: { limit?: number; cursor?: string | null; signal?: AbortSignal },
  ): Promise<{ schedule_id: string; runs: (Run & { tick_at: string })[]; next_cursor: string | null }>;
  wait(runId: string, options?: WaitOptions): Promise<Run>;
  stream(runId: string, options?: StreamOptions): AsyncGenerator<RunEvent, void, undefined>;
  createAndStream(
    req: SubmitRequest,
    options?: StreamOptions & { idempotencyKey?: string; useToken?: boolean },
  ): AsyncGenerator<{ type: "created"; run: Submitted } | RunEvent, void, undefined>;
}
