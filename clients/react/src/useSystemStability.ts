/**
 * useSystemStability: stability-relay's live stream (`/api/system-status/live`) as React state.
 *
 *   const { isStable, loading, error } = useSystemStability();
 *
 * The planning document's return shape, and what it lacked:
 *
 * - `isStable`: `true` stable, `false` processing, `null` unknown. Unknown is never processing:
 *   the relay sends `"stable": null` while it cannot read the database, and the hook says `null`
 *   while it has no stream (after `graceMs`, below). Render `null` as "Status unavailable".
 * - `loading`: `true` until the first state arrives or the first connection fails.
 * - `error`: why the status may be out of date (the stream dropped, was refused, or the
 *   relay said the credential is no longer valid), `null` while the stream is open. It says
 *   when the next attempt is.
 *
 * Beside them: `status` (the last event: `state`, `since`, `seq`, `activities`, `running`),
 * `stale` (`true` while the stream is not open: `status` is what was last heard),
 * `connection` and `unauthorized` (the relay's reason, while it refuses the credential).
 *
 * How it stays connected. EventSource reconnects by itself when a stream that opened with 200
 * ends (a relay restart, a proxy's cut): the hook keeps that EventSource and lets it. It stops
 * for good after an answer that is not a 200 event stream (401, 429, 503, a proxy's 502 while
 * no relay is up): then the hook opens a new one after a jittered backoff (`retry.initialMs`
 * doubling to `retry.maxMs`; at once when the browser comes back online). EventSource does not
 * say why it gave up, so the hook asks once with `fetch` meanwhile: `error` names the status,
 * a `Retry-After` is honoured, a 401 or 403 sets `unauthorized`, and a relay that answers 200
 * again is reconnected to at once.
 *
 * After a drop, `isStable` keeps the last state for `graceMs` (3 s, as the `<system-status>`
 * component does: a relay restart does not flash the badge) and is `null` after that;
 * `graceMs: 0` makes it `null` at once. Every (re)connect resyncs: the relay sends
 * the current state at once, or nothing when the browser's `Last-Event-ID` already names it
 * (an EventSource's own reconnect to the same relay): then the last state is current again
 * once the stream has been open for `CONFIRM_MS` without a newer one.
 *
 * `event: unauthorized` (the relay's last event on a stream whose JWT expired or whose
 * credential a reload no longer accepts): `isStable` is `null` at once, `unauthorized` and
 * `error` say why. EventSource reconnects, the relay answers 401 (until the app renews the
 * cookie), and the hook goes on retrying with backoff; the first state heard clears it.
 *
 * Every component that calls the hook with the same options shares one EventSource (browsers
 * allow 6 connections per origin over HTTP/1.1); it is closed when the last one unmounts.
 * Server rendering: no EventSource is made on the server, and the first render in the
 * browser matches it (`loading: true`).
 *
 * React 18 or later (useSyncExternalStore); nothing else.
 */
import { useSyncExternalStore } from "react";

export type StabilityState = "stable" | "processing" | "unknown";

/** One event of the live stream (README, "The live stream"). */
export interface StabilityEvent {
  stable: boolean | null;
  state: StabilityState;
  /** When the state began (ISO 8601). */
  since: string;
  /** The stream's `id:`; `/api/system-status/details` names the state it agrees with by it. */
  seq: number;
  /** Each activity's truth; `null` while unknown. */
  activities: Record<string, boolean | null>;
  /** The labels of the activities running ("Importing data"). */
  running: string[];
}

/**
 * `connecting`: no stream yet; `open`; `reconnecting`: the stream ended and EventSource is
 * reconnecting by itself; `retrying`: EventSource gave up and the hook waits to open a new one.
 */
export type Connection = "connecting" | "open" | "reconnecting" | "retrying";

export interface SystemStability {
  isStable: boolean | null;
  loading: boolean;
  error: string | null;
  status: StabilityEvent | null;
  stale: boolean;
  connection: Connection;
  unauthorized: string | null;
}

export interface SystemStabilityOptions {
  /** The live stream; default `/api/system-status/live` (same origin, behind the app's proxy). */
  url?: string;
  /** Send cookies to a relay on another origin (it must list this origin in `cors`). */
  withCredentials?: boolean;
  /** How long the last state is kept after the stream drops, in ms; default 3000. */
  graceMs?: number;
  /** The backoff after EventSource gives up, in ms; default 1000 doubling to 30000. */
  retry?: { initialMs?: number; maxMs?: number };
}

export const DEFAULT_URL = "/api/system-status/live";
const DEFAULT_GRACE_MS = 3_000;
const DEFAULT_RETRY_INITIAL_MS = 1_000;
const DEFAULT_RETRY_MAX_MS = 30_000;
/** After an EventSource's own reconnect, how long a stream must be open without a newer state
 * for the last one to count as current (the relay sends a newer one in its first write). */
const CONFIRM_MS = 500;

const INITIAL: SystemStability = Object.freeze({
  isStable: null,
  loading: true,
  error: null,
  status: null,
  stale: false,
  connection: "connecting",
  unauthorized: null,
});

export function useSystemStability(options: SystemStabilityOptions = {}): SystemStability {
  const stream = streamFor(options);
  return useSyncExternalStore(stream.subscribe, stream.getSnapshot, serverSnapshot);
}

function serverSnapshot(): SystemStability {
  return INITIAL;
}

/** The event's payload, or `null` when it is not a stability event. Never throws. */
export function parseStabilityEvent(data: string): StabilityEvent | null {
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return null;
  }
  if (!isRecord(value)) return null;
  const { stable, since, seq, activities, running } = value;
  if (stable !== true && stable !== false && stable !== null) return null;
  if (typeof seq !== "number" || !Number.isFinite(seq)) return null;
  const truths: Record<string, boolean | null> = {};
  if (isRecord(activities)) {
    for (const [name, active] of Object.entries(activities)) {
      truths[name] = typeof active === "boolean" ? active : null;
    }
  }
  return {
    stable,
    // Named after `stable` (the seed's field), which the relay's `state` always agrees with.
    state: stable === null ? "unknown" : stable ? "stable" : "processing",
    since: typeof since === "string" ? since : "",
    seq,
    activities: truths,
    running: Array.isArray(running) ? running.filter((label) => typeof label === "string") : [],
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// One stream per set of options, shared by every component that uses it.
const streams = new Map<string, Stream>();

const SERVER_STREAM = {
  subscribe: () => () => {},
  getSnapshot: serverSnapshot,
};

function streamFor(options: SystemStabilityOptions): Pick<Stream, "subscribe" | "getSnapshot"> {
  if (typeof window === "undefined") return SERVER_STREAM;
  const settings: Settings = {
    url: options.url ?? DEFAULT_URL,
    withCredentials: options.withCredentials ?? false,
    graceMs: Math.max(0, options.graceMs ?? DEFAULT_GRACE_MS),
    retryInitialMs: Math.max(1, options.retry?.initialMs ?? DEFAULT_RETRY_INITIAL_MS),
    retryMaxMs: Math.max(1, options.retry?.maxMs ?? DEFAULT_RETRY_MAX_MS),
  };
  const key = JSON.stringify(settings);
  let stream = streams.get(key);
  if (stream === undefined) {
    stream = new Stream(key, settings);
    streams.set(key, stream);
  }
  return stream;
}

interface Settings {
  url: string;
  withCredentials: boolean;
  graceMs: number;
  retryInitialMs: number;
  retryMaxMs: number;
}

type Timer = ReturnType<typeof setTimeout>;

/** One EventSource (at a time) and the state it gives, for its subscribers. */
class Stream {
  private snapshot: SystemStability = INITIAL;
  private readonly listeners = new Set<() => void>();
  private source: EventSource | null = null;
  /** The EventSource the last state came from: its own reconnects send that state's id. */
  private heardOn: EventSource | null = null;
  private failures = 0;
  private retryTimer: Timer | undefined;
  private graceTimer: Timer | undefined;
  private confirmTimer: Timer | undefined;
  private stopTimer: Timer | undefined;
  private retryDue = 0;
  /** The request asking why EventSource gave up (`probe`), while it runs. */
  private probing: AbortController | null = null;
  private retriedAtOnce = false;

  constructor(
    private readonly key: string,
    private readonly settings: Settings,
  ) {}

  readonly getSnapshot = (): SystemStability => this.snapshot;

  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    // A subscriber that comes back at once (React's StrictMode mounts twice) keeps the stream.
    clearTimeout(this.stopTimer);
    this.stopTimer = undefined;
    if (this.listeners.size === 1 && this.source === null && this.retryTimer === undefined) {
      streams.set(this.key, this);
      this.open();
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.stopTimer === undefined) {
        this.stopTimer = setTimeout(() => this.stop(), 0);
      }
    };
  };

  private stop(): void {
    this.stopTimer = undefined;
    if (this.listeners.size > 0) return;
    this.closeSource();
    this.probing?.abort();
    this.probing = null;
    for (const timer of [this.retryTimer, this.graceTimer, this.confirmTimer]) clearTimeout(timer);
    this.retryTimer = this.graceTimer = this.confirmTimer = undefined;
    window.removeEventListener("online", this.retryNow);
    this.failures = 0;
    this.retriedAtOnce = false;
    this.heardOn = null;
    this.snapshot = INITIAL;
    if (streams.get(this.key) === this) streams.delete(this.key);
  }

  private open(): void {
    this.retryTimer = undefined;
    this.probing?.abort();
    this.probing = null;
    window.removeEventListener("online", this.retryNow);
    if (typeof EventSource === "undefined") {
      this.set({ loading: false, error: "This browser has no EventSource: no live status." });
      return;
    }
    const source = new EventSource(this.settings.url, {
      withCredentials: this.settings.withCredentials,
    });
    this.source = source;
    source.onopen = () => this.opened(source);
    source.onmessage = (event: MessageEvent<string>) => this.heard(source, event.data);
    source.onerror = () => this.failed(source);
    source.addEventListener("unauthorized", (event) => {
      this.refused(source, (event as MessageEvent<string>).data);
    });
  }

  private closeSource(): void {
    if (this.source === null) return;
    this.source.onopen = this.source.onmessage = this.source.onerror = null;
    this.source.close();
    this.source = null;
  }

  private opened(source: EventSource): void {
    if (source !== this.source) return;
    this.failures = 0;
    this.retriedAtOnce = false;
    this.set({ connection: "open", error: null });
    // An own reconnect: the relay sends nothing when Last-Event-ID names its current state.
    const last = this.snapshot.status;
    if (source === this.heardOn && last !== null) {
      clearTimeout(this.confirmTimer);
      this.confirmTimer = setTimeout(() => {
        this.confirmTimer = undefined;
        if (this.source !== source || source.readyState !== EventSource.OPEN) return;
        this.current(last);
      }, CONFIRM_MS);
    }
  }

  private heard(source: EventSource, data: string): void {
    if (source !== this.source) return;
    const event = parseStabilityEvent(data);
    if (event === null) {
      this.set({ error: "The relay sent a status event this page cannot read." });
      return;
    }
    this.heardOn = source;
    this.failures = 0;
    this.current(event);
  }

  /** `event` is the current state: the stream is open and up to date. */
  private current(event: StabilityEvent): void {
    clearTimeout(this.graceTimer);
    clearTimeout(this.confirmTimer);
    this.graceTimer = this.confirmTimer = undefined;
    this.set({
      isStable: event.stable,
      loading: false,
      error: null,
      status: event,
      stale: false,
      connection: "open",
      unauthorized: null,
    });
  }

  private refused(source: EventSource, data: string): void {
    if (source !== this.source) return;
    let reason = "not authorized";
    try {
      const value: unknown = JSON.parse(data);
      if (isRecord(value) && typeof value.reason === "string" && value.reason) reason = value.reason;
    } catch {
      // keep the generic reason
    }
    // No grace: the relay will not tell this credential the state any more.
    clearTimeout(this.graceTimer);
    clearTimeout(this.confirmTimer);
    this.graceTimer = this.confirmTimer = undefined;
    this.set({
      isStable: null,
      loading: false,
      stale: this.snapshot.status !== null,
      unauthorized: reason,
      error: `${notAuthorized(reason)}.`,
    });
  }

  private failed(source: EventSource): void {
    if (source !== this.source) return;
    clearTimeout(this.confirmTimer);
    this.confirmTimer = undefined;
    this.dropped();
    const { unauthorized: why, connection } = this.snapshot;
    if (source.readyState !== EventSource.CLOSED) {
      // The stream ended after a 200, or the connection failed: EventSource reconnects by
      // itself (after the relay's `retry:`). Keep it.
      const lost = connection === "connecting" ? "cannot be reached" : "was lost";
      this.set({
        connection: "reconnecting",
        error: why !== null ? this.snapshot.error : `The connection to the status stream ${lost}; reconnecting.`,
      });
      return;
    }
    // EventSource gave up for good: an answer that is not a 200 event stream (401, 429, 503,
    // a proxy's 502) or no connection at all. It does not say which: one request asks.
    this.closeSource();
    const what = why !== null ? notAuthorized(why) : "The status stream was refused or cannot be reached";
    this.waitToRetry(this.backoff(), what);
    void this.probe();
  }

  /** Opens a new EventSource in `delay` ms, and says so in `error`. */
  private waitToRetry(delay: number, what: string): void {
    clearTimeout(this.retryTimer);
    this.retryDue = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.open(), delay);
    window.addEventListener("online", this.retryNow);
    const seconds = Math.max(1, Math.round(delay / 1000));
    this.set({ connection: "retrying", error: `${what}; retrying in ${seconds} s.` });
  }

  private readonly retryNow = (): void => {
    if (this.retryTimer === undefined) return;
    clearTimeout(this.retryTimer);
    this.open();
  };

  /** Why EventSource gave up, asked with fetch (which sees the status) while the hook waits:
   * a 401 or 403 is `unauthorized`, a `Retry-After` is honoured, and a relay that answers
   * 200 again is connected to at once. */
  private async probe(): Promise<void> {
    this.probing?.abort();
    const controller = new AbortController();
    this.probing = controller;
    const answer = await ask(this.settings, controller.signal);
    if (this.probing !== controller) return; // opened again, or stopped, meanwhile
    this.probing = null;
    const remaining = Math.max(0, this.retryDue - Date.now());
    if (answer.status >= 200 && answer.status < 300) {
      if (!answer.eventStream) {
        const type = answer.type || "no type";
        this.waitToRetry(remaining, `The status URL does not answer with an event stream (${type})`);
      } else if (!this.retriedAtOnce) {
        // Back (once per run of failures: a stream EventSource cannot read must not loop).
        this.retriedAtOnce = true;
        this.retryNow();
      }
      return;
    }
    if (answer.status === 401 || answer.status === 403) {
      const reason = answer.reason ?? (answer.status === 401 ? "authentication required" : "not allowed");
      clearTimeout(this.graceTimer);
      this.graceTimer = undefined;
      this.set({ isStable: null, unauthorized: reason });
      this.waitToRetry(remaining, notAuthorized(reason));
      return;
    }
    if (answer.status === 0) {
      this.waitToRetry(remaining, "The status service cannot be reached");
      return;
    }
    const told = Math.min(answer.retryAfterMs ?? 0, this.settings.retryMaxMs);
    const because = answer.reason !== null ? `: ${answer.reason}` : "";
    this.waitToRetry(Math.max(remaining, told), `The status stream was refused (HTTP ${answer.status}${because})`);
  }

  /** The stream is gone: the last state is kept for the grace period, then unknown. */
  private dropped(): void {
    const { graceMs } = this.settings;
    if (this.snapshot.isStable === null || graceMs === 0) {
      this.set({ isStable: null, loading: false, stale: this.snapshot.status !== null });
      return;
    }
    this.set({ loading: false, stale: true }); // isStable is not null: a state was heard
    if (this.graceTimer === undefined) {
      this.graceTimer = setTimeout(() => {
        this.graceTimer = undefined;
        this.set({ isStable: null });
      }, graceMs);
    }
  }

  /** Jittered exponential backoff: `initialMs` doubling to `maxMs`, each 50-100 % of its step. */
  private backoff(): number {
    const { retryInitialMs, retryMaxMs } = this.settings;
    const step = Math.min(retryMaxMs, retryInitialMs * 2 ** Math.min(this.failures, 30));
    this.failures += 1;
    return Math.round(step * (0.5 + Math.random() / 2));
  }

  private set(patch: Partial<SystemStability>): void {
    const before = this.snapshot;
    const after = { ...before, ...patch };
    const keys = Object.keys(patch) as (keyof SystemStability)[];
    if (keys.every((key) => Object.is(before[key], after[key]))) return;
    this.snapshot = Object.freeze(after);
    for (const listener of [...this.listeners]) listener();
  }
}

function notAuthorized(reason: string): string {
  return `Not authorized to see the system status (${reason}): sign in again`;
}

interface Answer {
  /** 0: no answer (no connection, or refused by CORS). */
  status: number;
  /** The answer's media type, and whether it is `text/event-stream`. */
  type: string;
  eventStream: boolean;
  /** The relay's `{"error": ...}`, for an answer that is not a 2xx. */
  reason: string | null;
  retryAfterMs: number | null;
}

/** The live stream's status, without reading a stream: a 2xx is let go of at once. */
async function ask(settings: Settings, signal: AbortSignal): Promise<Answer> {
  let response: Response;
  try {
    response = await fetch(settings.url, {
      headers: { Accept: "text/event-stream" },
      cache: "no-store",
      credentials: settings.withCredentials ? "include" : "same-origin",
      signal,
    });
  } catch {
    return { status: 0, type: "", eventStream: false, reason: null, retryAfterMs: null };
  }
  const type = (response.headers.get("Content-Type") ?? "").split(";")[0]!.trim().toLowerCase();
  const eventStream = type === "text/event-stream";
  if (response.ok) {
    void response.body?.cancel().catch(() => {});
    return { status: response.status, type, eventStream, reason: null, retryAfterMs: null };
  }
  const body: unknown = await response.json().catch(() => null);
  const reason = isRecord(body) && typeof body.error === "string" && body.error ? body.error : null;
  const retryAfterMs = retryAfter(response.headers.get("Retry-After"));
  return { status: response.status, type, eventStream, reason, retryAfterMs };
}

/** `Retry-After` in ms: delta-seconds or an HTTP-date (RFC 9110 10.2.3); `null` otherwise. */
function retryAfter(value: string | null): number | null {
  if (value === null) return null;
  const text = value.trim();
  if (/^[0-9]+$/.test(text)) return Number(text) * 1000;
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, when - Date.now());
}
