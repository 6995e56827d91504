/*
 * <system-status>: the stability badge and details dialog of stability-relay, for any page.
 *
 *   <script src="https://relay.example/static/system-status.js" defer></script>
 *   <system-status src="https://relay.example"></system-status>
 *
 * A classic script (not an ES module, so a cross-origin <script src> needs no CORS) in plain
 * ES2020: no framework, no build step, no dependency. It works under a strict
 * Content-Security-Policy: no inline script, no style attributes; the component's styles are a
 * constructable stylesheet adopted by its shadow root, and sizes are set through the CSSOM.
 *
 * Attributes
 *   src                 the relay's base URL; default: this page's origin (relay behind the same proxy)
 *   heartbeat-timeout   seconds without a byte on the live stream before reconnecting (default 45,
 *                       three times the relay's default 15 s heartbeat)
 *   inline-hint         show the explanatory sentence under the badge instead of as a tooltip
 *   hidden-grace        seconds a hidden page keeps the live stream open before letting go of it
 *                       (default 30); it reconnects, with the current state, when shown again
 *   timeline            also show the last 24 hours under the badge (for a status page; embedded
 *                       badges stay small without it): a bar from 24 h ago to now with each
 *                       processing period on it (hover or focus one for its start, end, duration
 *                       and import jobs; arrow keys move between them), and how long processing
 *                       usually takes (from the relay's last 7 days, once there are 3 periods).
 *                       The history is fetched when the state becomes stable or processing and
 *                       every few minutes; when the relay cannot give it, the timeline hides.
 *   state               (set by the component) connecting | stable | processing | unknown |
 *                       unreachable | unauthorized (the relay answered 401 or 403)
 *   polling             (set by the component) present while the state comes from polling instead
 *                       of the live stream, because something on the way (a proxy that buffers
 *                       whole responses) held the stream back: see "Behind a proxy that buffers"
 *   attention           (set by the component while processing) stalled | overdue: some running
 *                       work has made no progress (its activity's stalled condition holds), or has
 *                       run past its usual or configured time; absent otherwise. The state stays
 *                       "processing" ("stable" means no active work); the badge turns red (stalled)
 *                       or orange (overdue) and the hint says which work and for how long, in the
 *                       webhooks' words: "Importing data has made no progress for 30 min",
 *                       "Importing data is overdue: running 2 h 10 min, expected within 40 min".
 *
 * Properties (read-only): `state`, `stable` (true, false, or null while unknown), `since`,
 * `signals` (the relay's stalled and overdue work: [{kind: "stalled" | "overdue", activity,
 * label, since, bound_s}], stalled first; empty unless processing),
 * `running` (the labels of the activities running now, in the relay's config order, such as
 * ["Importing data"]; empty unless processing) and `activities` ({name: true | false | null},
 * or null when the relay does not say). While processing, the hint names what is running.
 *
 * The element fires `system-status-change` (detail: {state, stable, since, running,
 * activities, signals}) on every change: of the state, of what is running while it stays the
 * same, or of the stalled and overdue work.
 *
 * The details dialog shows one section per activity when the relay reports them (an older
 * relay's import jobs and analytics tasks otherwise), with live progress bars for import jobs
 * from the relay's `import_job_progress` events, and the time left where the relay estimates it
 * ("about 4\u20136 min left", from an `eta` of {low_s, high_s, source}). Under each active
 * activity, its queue figures from the relay's `signals` (read at most every signals.interval):
 * "12 waiting or running" ("10,000+" past the relay's depth_cap), "oldest 4 min" where the
 * activity declares an age_column, "2 stalled", and "expected within 40 min" (its overdue bound);
 * when the relay cannot read them, "Queue figures unavailable: <its reason>". While something is
 * active the open dialog asks again every 15 s, since the figures move without a change of state.
 *
 * The live stream is read with fetch() rather than EventSource: EventSource hides the relay's
 * `: ping` comments (so a dead, silent connection cannot be told from a quiet one without
 * reconnecting every few seconds) and stops for good after a non-200 answer. Reading the stream
 * ourselves, every byte proves the connection alive, and any failure (refused, 503, 429, a stream
 * that ends or goes silent) leads to the same capped, jittered backoff: 1 s doubling to 30 s,
 * never giving up, with the server's `retry:` and `Retry-After` as minimums.
 *
 * Behind a proxy that buffers (docs/buffering-proxies.md): the relay sends the current state the
 * moment a stream opens, so a stream that has delivered no state within 5 s (or the
 * heartbeat-timeout, if shorter) is held back on the way. If the JSON snapshot answers then, the
 * element falls back: a long poll of /api/system-status/wait for the other state (answered on the
 * change, or after 20 s), then the snapshot, in rounds at most two a second; it says so in its hint
 * (the tooltip), in the `polling` attribute and in one console line. It tries the stream again
 * after 5–10 s, doubling up to 5 min, while it keeps polling, and returns to the stream as soon
 * as a stream delivers the state (the proxy fixed). Progress events need the stream.
 *
 * One stream per origin, however many tabs (docs/browser-tabs.md). The elements that read the
 * same stream URL, in all the tabs of one origin, elect a leader with the Web Locks API (a lock
 * named after the URL, held for as long as the leader leads); the leader alone reads the stream
 * and rebroadcasts what it reads (states, progress, "the stream is down") on a BroadcastChannel
 * of the same name; the others render from the channel, and a newcomer asks the leader for the
 * current state, so it shows at once. When the leader's tab closes, the lock passes to a tab
 * still waiting for it, which opens the stream: the relay sends the current state on every new
 * connection. Without navigator.locks (an insecure context, an older browser) or
 * BroadcastChannel, every element reads a stream of its own, as before.
 *
 * Hidden pages: each tab decides for itself. A hidden tab stops waiting for the lock at once
 * (it keeps listening on the channel); a hidden leader keeps the stream for `hidden-grace`
 * seconds, then closes it and lets the lock go, to a visible tab if one is waiting. So the
 * stream stays open while any tab of the origin is visible, and closes `hidden-grace` seconds
 * after the last one was hidden; the first tab shown again reconnects. Without sharing, each
 * tab pauses its own stream the same way. A page put in the back/forward cache or frozen lets
 * go at once.
 *
 * The script, one job a class: pure helpers first (their wording, `SystemStatus.wording`, is
 * compared with the relay's by tests/browser/test_eta_wording.py), two small classes the others
 * share, `LatestRequest` (one request at a time, the newest winning) and `Backoff` (capped,
 * jittered, doubling), then `Timeline` (the 24 hours), `DetailsDialog`, `Badge` (the badge, its
 * hint and the host's state, attention and polling attributes), `StreamReader` (the live stream
 * and the polling fallback), `TabShare` (the election among tabs, which owns the reader) and the
 * element, which wires them and fires `system-status-change`.
 */
(() => {
  "use strict";

  if (typeof window === "undefined" || !window.customElements) return;
  if (window.customElements.get("system-status")) return;

  const LIVE_PATH = "/api/system-status/live";
  const SNAPSHOT_PATH = "/api/system-status";
  const WAIT_PATH = "/api/system-status/wait";
  const DETAILS_PATH = "/api/system-status/details";
  const HISTORY_PATH = "/api/system-status/history?since=24h&limit=1000";
  const TIMELINE_SPAN_MS = 24 * 3600 * 1000;
  // The history is fetched again this often, and the bar redrawn (it moves with the clock).
  const HISTORY_REFRESH_MS = 5 * 60 * 1000;
  const TIMELINE_TICK_MS = 60 * 1000;
  // After a change of state, the relay's elected leader writes the period: fetch a moment later,
  // and again (1 s, doubling) a few times while the history still disagrees with the state.
  const HISTORY_DELAY_MS = 300;
  const HISTORY_RECHECKS = 4;
  const USUAL_MIN_PERIODS = 3;
  const MAX_SLUGS_SHOWN = 5;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const DEFAULT_HEARTBEAT_TIMEOUT_S = 45;
  const DEFAULT_HIDDEN_GRACE_S = 30;
  // The relay writes the current state with a stream's headers: a stream that has not delivered
  // it within this long (or the heartbeat-timeout, if shorter) is held back on the way.
  const FIRST_EVENT_TIMEOUT_MS = 5000;
  // How long the snapshot may take to answer the check that follows, and a poll's snapshot.
  const SNAPSHOT_TIMEOUT_MS = 5000;
  // The fallback's long polls: under common proxies' read timeouts (nginx: 60 s); while the
  // state is unknown, short, since /wait answers a change to the state it was not asked for
  // only at the end of the round.
  const WAIT_ROUND_S = 20;
  const WAIT_ROUND_UNKNOWN_S = 5;
  // At most two rounds (snapshot, then /wait) a second, whatever /wait answers: a system that
  // flips all the time costs that much, and a flip right after the last one waits this long.
  const POLL_MIN_GAP_MS = 500;
  // When /wait refuses (429) or is missing (an older relay): the snapshot alone, this often.
  const POLL_PLAIN_MS = 5000;
  // While polling, the stream is tried again after 5-10 s, doubling up to 5 min.
  const PROBE_MIN_MS = 10000;
  const PROBE_MAX_MS = 5 * 60 * 1000;
  const POLLING_NOTE =
    "Live updates are held back on the way (a proxy that buffers them?), so the status is checked by polling.";
  // The lock and the channel are named after the stream's URL; "v1" is the protocol of the
  // channel's messages, so that tabs running another version of this script keep to themselves.
  const SHARE_PREFIX = "system-status/v1 ";
  // After the stream drops, the last known state is kept this long before "Status unavailable":
  // a relay restart or a proxy reload should not flash the badge grey.
  const GRACE_MS = 3000;
  // Details refreshes triggered by live events are coalesced into one per this interval.
  const REFRESH_DELAY_MS = 400;
  // A generic details row: its title is the first of these fields that has text, its pill the
  // first state field; a few other plain fields make the line under it.
  const TITLE_FIELDS = ["command", "task", "task_name", "name", "title", "slug", "label"];
  const STATE_FIELDS = ["state", "status"];
  const MAX_META_FIELDS = 3;
  // While the dialog is open and something is active, the details (depth, lag, estimates) are
  // fetched again this often: the relay reads depth and lag every signals.interval (15 s by
  // default), and they change without a change of state.
  const FIGURES_REFRESH_MS = 15 * 1000;

  // While work is stalled or overdue, the hint's "for 30 min" is redrawn this often.
  const SIGNAL_TICK_MS = 15 * 1000;
  const ATTENTION = {
    stalled: { tone: "stalled", label: "Processing stalled" },
    overdue: { tone: "overdue", label: "Processing overdue" },
  };

  const LOOKS = {
    connecting: { tone: "neutral", label: "Connecting\u2026", hint: "Connecting to the status service\u2026" },
    stable: { tone: "stable", label: "System stable", hint: "All data processing is complete" },
    processing: { tone: "processing", label: "Processing data", hint: "Data is currently being processed" },
    unknown: {
      tone: "neutral",
      label: "Status unavailable",
      hint: "The status service cannot reach the database; the status returns when it does",
    },
    unreachable: {
      tone: "neutral",
      label: "Status unavailable",
      hint: "The status service cannot be reached; retrying automatically",
    },
    unauthorized: {
      tone: "neutral",
      label: "Status unavailable",
      hint: "Sign in to see the system status",
    },
  };

  const CSS = `
:host {
  display: inline-block;
  position: relative;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  line-height: 1.4;
  color: #1f2937;
  --ss-focus: #2563eb;
}
:host([timeline]) { display: block; }
:host([hidden]) { display: none; }
.row { display: inline-flex; align-items: center; gap: 0.5em; justify-content: center; }
.anchor { position: relative; display: inline-flex; }
.badge {
  display: inline-flex; align-items: center; gap: 0.45em;
  padding: 0.2em 0.75em; border: 1px solid; border-radius: 999px;
  font-size: 0.875em; font-weight: 600; white-space: nowrap; cursor: default;
  transition: background-color 0.3s, color 0.3s, border-color 0.3s;
}
.badge:focus-visible, button:focus-visible { outline: 2px solid var(--ss-focus); outline-offset: 2px; }
.dot { width: 0.55em; height: 0.55em; border-radius: 50%; flex: none; background: currentColor; }
.badge[data-tone="stable"] { background: #ecfdf3; color: #166534; border-color: #a7e8bf; }
.badge[data-tone="stable"] .dot { background: #16a34a; }
.badge[data-tone="processing"] { background: #fffbeb; color: #854d0e; border-color: #fcd98a; }
.badge[data-tone="processing"] .dot { background: #d97706; animation: ss-pulse 1.6s ease-in-out infinite; }
.badge[data-tone="stalled"] { background: #fef2f2; color: #991b1b; border-color: #fca5a5; }
.badge[data-tone="stalled"] .dot { background: #dc2626; }
.badge[data-tone="overdue"] { background: #fff7ed; color: #9a3412; border-color: #fdba74; }
.badge[data-tone="overdue"] .dot { background: #ea580c; animation: ss-pulse 1.6s ease-in-out infinite; }
.badge[data-tone="neutral"] { background: #f3f4f6; color: #374151; border-color: #d1d5db; }
.badge[data-tone="neutral"] .dot { background: #9ca3af; }
:host([state="connecting"]) .badge .dot { animation: ss-pulse 1.2s ease-in-out infinite; }
@keyframes ss-pulse { 0%, 100% { opacity: 1; } 50% { opacity: 0.35; } }

.tip {
  position: absolute; z-index: 10; top: calc(100% + 0.5rem); left: 50%;
  transform: translateX(-50%);
  width: max-content; max-width: min(18rem, 80vw);
  padding: 0.4rem 0.6rem; border-radius: 0.375rem;
  background: #111827; color: #f9fafb;
  font-size: 0.8125rem; font-weight: 400; line-height: 1.35; text-align: center; white-space: normal;
  opacity: 0; visibility: hidden; pointer-events: none;
  transition: opacity 0.15s, visibility 0.15s;
}
.anchor:hover .tip, .badge:focus + .tip { opacity: 1; visibility: visible; }
:host([inline-hint]) .row { flex-direction: column; gap: 0.6em; }
:host([inline-hint]) .anchor { flex-direction: column; align-items: center; gap: 0.5em; }
:host([inline-hint]) .tip {
  position: static; transform: none; opacity: 1; visibility: visible;
  background: none; color: #4b5563; padding: 0; font-size: 0.5em; max-width: 28rem;
}

button {
  font: inherit; color: inherit; cursor: pointer;
  border-radius: 0.375rem; border: 1px solid #d1d5db; background: #fff;
}
button:hover { background: #f9fafb; border-color: #9ca3af; }
.details { font-size: 0.8125em; padding: 0.25em 0.7em; color: #1f2937; }
:host([inline-hint]) .details { font-size: 0.5em; padding: 0.35em 1em; }

dialog {
  box-sizing: border-box;
  width: min(36rem, calc(100vw - 1.5rem)); max-height: min(42rem, calc(100dvh - 2rem));
  padding: 0; border: none; border-radius: 0.75rem;
  background: #fff; color: #1f2937;
  box-shadow: 0 20px 50px rgba(15, 23, 42, 0.25), 0 2px 6px rgba(15, 23, 42, 0.12);
  font-size: 1rem; line-height: 1.45; text-align: left;
}
dialog::backdrop { background: rgba(15, 23, 42, 0.45); }
.panel { display: flex; flex-direction: column; max-height: inherit; }
.head {
  display: flex; align-items: center; justify-content: space-between; gap: 1rem;
  padding: 0.9rem 1rem 0.75rem 1.25rem; border-bottom: 1px solid #e5e7eb;
}
h2 { margin: 0; font-size: 1.0625rem; font-weight: 650; }
.close {
  width: 2rem; height: 2rem; padding: 0; border-color: transparent; background: transparent;
  font-size: 1.35rem; line-height: 1; color: #4b5563;
}
.close:hover { background: #f3f4f6; border-color: transparent; }
.content { padding: 1rem 1.25rem 1.25rem; overflow-y: auto; overflow-x: hidden; }
h3 {
  margin: 0 0 0.5rem; font-size: 0.75rem; font-weight: 650;
  letter-spacing: 0.05em; text-transform: uppercase; color: #4b5563;
}
section + section { margin-top: 1.25rem; }
ul { list-style: none; margin: 0; padding: 0; display: grid; grid-template-columns: minmax(0, 1fr); gap: 0.6rem; }
li { min-width: 0; border: 1px solid #e5e7eb; border-radius: 0.5rem; padding: 0.65rem 0.8rem; }
.line { display: flex; justify-content: space-between; align-items: baseline; gap: 0.75rem; min-width: 0; }
.name { font-weight: 600; font-size: 0.9375rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
.desc { margin: 0.1rem 0 0; font-size: 0.8125rem; color: #6b7280; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.pill {
  flex: none; font-size: 0.75rem; font-weight: 600; padding: 0.1rem 0.5rem; border-radius: 999px;
  background: #fffbeb; color: #854d0e; border: 1px solid #fcd98a;
}
.pill[data-done] { background: #ecfdf3; color: #166534; border-color: #a7e8bf; }
.pill[data-unknown] { background: #f3f4f6; color: #374151; border-color: #d1d5db; }
h3.activity {
  display: flex; align-items: center; justify-content: space-between; gap: 0.75rem; min-width: 0;
}
h3.activity .title { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
h3.activity .pill { text-transform: none; letter-spacing: normal; }
.more { margin: 0.45rem 0 0; font-size: 0.8125rem; color: #6b7280; text-align: center; }
.bar { margin-top: 0.6rem; height: 0.5rem; border-radius: 999px; background: #e5e7eb; overflow: hidden; }
.fill { height: 100%; width: 0; border-radius: inherit; background: #2563eb; transition: width 0.5s ease-out; }
.rows { margin: 0.3rem 0 0; font-size: 0.8125rem; color: #4b5563; text-align: right; font-variant-numeric: tabular-nums; }
.empty { margin: 0; color: #6b7280; font-size: 0.9375rem; }
.empty + .empty { margin-top: 0.35rem; }
.verdict { margin: 1.1rem 0 0; text-align: center; font-size: 0.875rem; font-weight: 600; }
.verdict.ok { color: #166534; }
.verdict.warn { color: #854d0e; }
.loading { display: flex; align-items: center; justify-content: center; gap: 0.6rem; padding: 1.5rem 0; color: #4b5563; }
.spinner {
  width: 1.1rem; height: 1.1rem; border-radius: 50%;
  border: 2px solid #d1d5db; border-top-color: #2563eb; animation: ss-spin 0.8s linear infinite;
}
@keyframes ss-spin { to { transform: rotate(360deg); } }
.error { margin: 0; padding: 0.75rem 0.9rem; border-radius: 0.5rem; background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; }
.retry { margin-top: 0.75rem; padding: 0.3rem 0.8rem; font-size: 0.875rem; }
.foot { display: flex; flex-wrap: wrap; justify-content: space-between; align-items: baseline; column-gap: 0.75rem; }
.foot .rows { margin-left: auto; }
.eta { margin: 0.3rem 0 0; font-size: 0.8125rem; color: #4b5563; font-variant-numeric: tabular-nums; }
section > .eta { margin: -0.2rem 0 0.5rem; }
.eta.overall { margin-top: 1.1rem; text-align: center; font-weight: 600; color: #854d0e; }
.figures { margin: -0.2rem 0 0.5rem; font-size: 0.8125rem; color: #4b5563; font-variant-numeric: tabular-nums; }
.figures + .eta { margin-top: -0.35rem; }
.figures [data-figure="stalled"] { color: #991b1b; font-weight: 600; }
.figures [data-figure="bound"][data-overdue] { color: #9a3412; font-weight: 600; }
.figures-error { margin: 1.1rem 0 0; font-size: 0.8125rem; color: #6b7280; text-align: center; }

.timeline {
  margin: 1.25rem auto 0; max-width: 32rem;
  font-size: 0.8125rem; font-weight: 400; line-height: 1.4; text-align: left; color: #4b5563;
}
.timeline[hidden], .timeline [hidden] { display: none; }
.tl-caption { display: flex; justify-content: space-between; align-items: baseline; gap: 0.75rem; margin-bottom: 0.35rem; }
.tl-title { font-weight: 600; color: #374151; }
.tl-total { text-align: right; font-variant-numeric: tabular-nums; }
.tl-wrap { position: relative; }
.tl-track {
  position: relative; height: 0.9rem; border-radius: 0.25rem;
  background: #dcfce7; box-shadow: inset 0 0 0 1px #bbf7d0;
}
.seg {
  position: absolute; top: 0; bottom: 0; left: 0; width: 0; min-width: 4px;
  border-radius: 2px; background: #f59e0b; cursor: default;
}
.seg[data-open] { background: #fbbf24; animation: ss-pulse 1.6s ease-in-out infinite; }
.seg:hover, .seg[data-current] { background: #b45309; animation: none; }
.seg:focus { outline: none; }
.seg:focus-visible { outline: 2px solid var(--ss-focus); outline-offset: 1px; z-index: 1; }
.tl-tip {
  position: absolute; z-index: 5; top: calc(100% + 0.4rem); left: 0;
  width: max-content; max-width: min(18rem, 100%); box-sizing: border-box;
  padding: 0.35rem 0.55rem; border-radius: 0.375rem; background: #111827; color: #f9fafb;
  font-size: 0.8125rem; line-height: 1.35; text-align: center; pointer-events: none;
}
.tl-tip .when { display: block; font-weight: 600; }
.tl-tip .slugs { display: block; color: #d1d5db; overflow-wrap: anywhere; }
.tl-axis { display: flex; justify-content: space-between; margin-top: 0.25rem; font-size: 0.75rem; color: #6b7280; }
.usual { margin: 0.6rem 0 0; text-align: center; color: #374151; }

@media (prefers-reduced-motion: reduce) {
  *, *::before, *::after { animation: none !important; transition: none !important; }
}
`;

  const TEMPLATE = `
<div class="row" part="container">
  <span class="anchor">
    <span class="badge" part="badge" data-tone="neutral" role="status" aria-live="polite"
          aria-atomic="true" tabindex="0" aria-describedby="tip"><span class="dot" aria-hidden="true"></span><span class="label"></span></span>
    <span class="tip" id="tip" role="tooltip" part="hint"></span>
  </span>
  <button type="button" class="details" part="details-button" aria-haspopup="dialog">Details</button>
</div>
<div class="timeline" part="timeline" hidden>
  <div class="tl-caption"><span class="tl-title">Last 24 hours</span><span class="tl-total"></span></div>
  <div class="tl-wrap">
    <div class="tl-track" role="list" aria-label="Processing periods in the last 24 hours"></div>
    <div class="tl-tip" aria-hidden="true" hidden></div>
  </div>
  <div class="tl-axis" aria-hidden="true"><span>24 h ago</span><span>12 h ago</span><span>now</span></div>
  <p class="usual" hidden></p>
</div>
<dialog part="dialog" aria-labelledby="title">
  <div class="panel">
    <div class="head">
      <h2 id="title">System status details</h2>
      <button type="button" class="close" aria-label="Close">\u00d7</button>
    </div>
    <div class="content" aria-live="polite" aria-busy="false"></div>
  </div>
</dialog>`;

  let sharedSheet = null;
  function styleSheet() {
    if (sharedSheet === null && "adoptedStyleSheets" in Document.prototype && "replaceSync" in CSSStyleSheet.prototype) {
      sharedSheet = new CSSStyleSheet();
      sharedSheet.replaceSync(CSS);
    }
    return sharedSheet;
  }

  function stateOf(data) {
    if (data.state === "stable" || data.state === "processing" || data.state === "unknown") return data.state;
    if (data.stable === true) return "stable";
    if (data.stable === false) return "processing";
    return "unknown";
  }

  function prettyState(state) {
    const text = String(state || "").replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function isNumber(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  function toNumber(value) {
    if (value === null || value === undefined || value === "") return null;
    const number = Number(value);
    return Number.isFinite(number) ? number : null;
  }

  const integerFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const percentFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  function jobProgress(job) {
    const total = toNumber(job.total_rows);
    const imported = toNumber(job.imported_rows) || 0;
    let pct = toNumber(job.progress_pct);
    // A percentage column that was never filled in (0 while rows were imported): use the rows.
    if ((pct === null || (pct === 0 && imported > 0)) && total) pct = (100 * imported) / total;
    if (pct !== null) pct = Math.min(100, Math.max(0, pct));
    return { total, imported, pct };
  }

  function isRecord(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  /** The import-job rendering (name, progress bar, rows) fits rows shaped like an import job. */
  function isJobRow(row) {
    return "slug" in row || "progress_pct" in row || "total_rows" in row;
  }

  function firstText(row, fields) {
    for (const field of fields) {
      const value = row[field];
      if (typeof value === "string" && value.trim() !== "") return { field, value };
    }
    return null;
  }

  function plainValue(value) {
    if (typeof value === "string") return value.trim();
    if (isNumber(value)) return Number.isInteger(value) ? integerFormat.format(value) : percentFormat.format(value);
    if (typeof value === "boolean") return value ? "yes" : "no";
    return "";
  }

  /** "queue: default \u00b7 attempts: 2": the fields left, timestamps and references aside. */
  function metaLine(row, skip) {
    const parts = [];
    for (const [field, value] of Object.entries(row)) {
      if (parts.length >= MAX_META_FIELDS) break;
      if (skip.has(field) || field === "id" || field.endsWith("_at") || field.endsWith("_id")) continue;
      const text = plainValue(value);
      if (text) parts.push(`${field.replace(/_/g, " ")}: ${text}`);
    }
    return parts.join(" \u00b7 ");
  }

  /** The stalled and overdue work of a state event: [{kind, activity, label, since, bound_s}]. */
  function parseSignals(data) {
    const signals = [];
    for (const kind of ["stalled", "overdue"]) {
      if (!Array.isArray(data[kind])) continue;
      for (const item of data[kind]) {
        if (!isRecord(item) || typeof item.activity !== "string") continue;
        const since = typeof item.since === "string" ? item.since : null;
        const label = typeof item.label === "string" && item.label.trim() !== "" ? item.label : item.activity;
        const bound = toNumber(item.bound_s);
        signals.push({ kind, activity: item.activity, label, since, bound_s: bound });
      }
    }
    return signals;
  }

  /** "Importing data has made no progress for 30 min" (the webhooks' and the CLI's words). */
  function signalText(signal, now) {
    const started = signal.since === null ? NaN : Date.parse(signal.since);
    const elapsed = Number.isFinite(started) ? (now - started) / 1000 : null;
    if (signal.kind === "stalled") {
      if (elapsed === null || elapsed < 1) return `${signal.label} has stopped making progress`;
      return `${signal.label} has made no progress for ${exactDuration(elapsed)}`;
    }
    const running = elapsed === null ? "" : `: running ${exactDuration(elapsed)}`;
    const within = signal.bound_s ? `, expected within ${exactDuration(signal.bound_s)}` : "";
    return `${signal.label} is overdue${running}${within}`;
  }

  /** A snapshot's answer (or a state event): it says the state. */
  function isStateRecord(value) {
    return isRecord(value) && (typeof value.state === "string" || typeof value.stable === "boolean");
  }

  function sameRunning(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- durations, estimates and periods ------------------------------------------------------

  /** A rounded duration as [[value, unit], ...]: "45 s", "4 min", "1 h 25 min", "2 d 3 h". */
  function approxParts(seconds) {
    const s = Math.max(0, seconds);
    if (s < 59.5) {
      const n = s < 10 ? Math.max(1, Math.round(s)) : Math.round(s / 5) * 5;
      if (n < 60) return [[n, "s"]];
    }
    const minutes = Math.max(1, Math.round(s / 60));
    if (minutes < 60) return [[minutes, "min"]];
    if (minutes < 600) {
      const rounded = Math.round(minutes / 5) * 5;
      const hours = Math.floor(rounded / 60);
      const rest = rounded % 60;
      return rest ? [[hours, "h"], [rest, "min"]] : [[hours, "h"]];
    }
    const hours = Math.round(s / 3600);
    if (hours < 48) return [[hours, "h"]];
    const days = Math.floor(hours / 24);
    return hours % 24 ? [[days, "d"], [hours % 24, "h"]] : [[days, "d"]];
  }

  function partsText(parts) {
    return parts.map(([value, unit]) => `${value} ${unit}`).join(" ");
  }

  /** "about 4 min" material: a compact, rounded duration. */
  function approxDuration(seconds) {
    return partsText(approxParts(seconds));
  }

  /** "4 min 12 s", "2 h 3 min": the two largest units, whole numbers (as the relay writes them). */
  function exactDuration(seconds) {
    let rest = Math.floor(Math.max(0, seconds));
    if (rest < 1) return "less than a second";
    const parts = [];
    for (const [size, unit] of [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]]) {
      const value = Math.floor(rest / size);
      rest -= value * size;
      if (value || parts.length) parts.push([value, unit]);
    }
    return partsText(parts.slice(0, 2).filter(([value]) => value));
  }

  /** An `eta` of the relay ({low_s, high_s, source}) as {low, high, source}, or null. */
  function parseEta(value) {
    if (!isRecord(value)) return null;
    let low = toNumber(value.low_s);
    let high = toNumber(value.high_s);
    if (low === null) low = high;
    if (high === null) high = low;
    if (low === null || high === null || high < 0) return null;
    if (low > high) [low, high] = [high, low];
    return { low: Math.max(0, low), high, source: typeof value.source === "string" ? value.source.trim() : "" };
  }

  /** "about 4\u20136 min left", "about 5 min left", "less than 2 min left". */
  function etaText(eta) {
    if (eta.high < 1) return "almost done";
    const high = approxParts(eta.high);
    if (eta.low < 1) return `less than ${partsText(high)} left`;
    const low = approxParts(eta.low);
    const lowText = partsText(low);
    const highText = partsText(high);
    if (lowText === highText) return `about ${highText} left`;
    if (low.length === 1 && high.length === 1 && low[0][1] === high[0][1]) {
      return `about ${low[0][0]}\u2013${highText} left`;
    }
    return `about ${lowText} \u2013 ${highText} left`;
  }

  function etaElement(value, className) {
    const eta = parseEta(value);
    if (eta === null) return null;
    const node = element("p", className ? `eta ${className}` : "eta", etaText(eta));
    if (eta.source) node.title = `Estimated from ${eta.source}`;
    return node;
  }

  /** An activity's queue figures from the relay's `signals` ({depth, depth_capped,
   * oldest_age_s, stalled, overdue, overdue_bound_s}) as [[figure, text, overdue]], in the
   * order shown; empty when the relay has none for it (not read yet, or the read failed). */
  function figureParts(value) {
    if (!isRecord(value)) return [];
    const parts = [];
    const depth = toNumber(value.depth);
    if (depth !== null && depth > 0) {
      // Past the cap the relay reads depth_cap + 1 and says depth_capped.
      const count = value.depth_capped === true ? `${integerFormat.format(depth - 1)}+` : integerFormat.format(depth);
      parts.push(["depth", `${count} waiting or running`, false]);
    }
    const age = toNumber(value.oldest_age_s);
    if (age !== null && depth !== null && depth > 0) parts.push(["lag", `oldest ${approxDuration(age)}`, false]);
    const stalled = toNumber(value.stalled);
    if (stalled !== null && stalled > 0) parts.push(["stalled", `${integerFormat.format(stalled)} stalled`, false]);
    const bound = toNumber(value.overdue_bound_s);
    if (bound !== null && bound > 0) {
      const overdue = value.overdue === true;
      parts.push(["bound", `${overdue ? "overdue, " : ""}expected within ${exactDuration(bound)}`, overdue]);
    }
    return parts;
  }

  /** "12 waiting or running \u00b7 oldest 4 min \u00b7 expected within 40 min", or null. */
  function figuresElement(value) {
    const parts = figureParts(value);
    if (!parts.length) return null;
    const node = element("p", "figures");
    parts.forEach(([figure, text, overdue], index) => {
      if (index) node.append(" \u00b7 ");
      const part = element("span", "", text);
      part.dataset.figure = figure;
      part.toggleAttribute("data-overdue", overdue);
      node.append(part);
    });
    return node;
  }

  /** The history's periods, oldest first: {key, start, end (null while open), open, duration, slugs}. */
  function parsePeriods(list) {
    const periods = [];
    for (const period of list) {
      if (!isRecord(period) || typeof period.start !== "string") continue;
      const start = Date.parse(period.start);
      if (!Number.isFinite(start)) continue;
      const open = period.open === true || period.end === null || period.end === undefined;
      const end = open ? null : Date.parse(period.end);
      if (!open && !Number.isFinite(end)) continue;
      const slugs = Array.isArray(period.slugs)
        ? period.slugs.filter((slug) => typeof slug === "string" && slug.trim() !== "")
        : [];
      periods.push({ key: period.start, start, end, open, duration: toNumber(period.duration_s), slugs });
    }
    return periods.sort((a, b) => a.start - b.start);
  }

  function periodSeconds(period, now) {
    if (period.open) return Math.max(0, (now - period.start) / 1000, period.duration || 0);
    return period.duration !== null ? period.duration : Math.max(0, (period.end - period.start) / 1000);
  }

  const clockFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
  const dayClockFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", hour: "numeric", minute: "2-digit" });

  function clock(time, now) {
    return (new Date(time).toDateString() === new Date(now).toDateString() ? clockFormat : dayClockFormat).format(time);
  }

  /** What a period's tooltip and label say: when, how long, and which import jobs. */
  function describePeriod(period, now) {
    const seconds = periodSeconds(period, now);
    const when = period.open
      ? `Since ${clock(period.start, now)}, ${exactDuration(seconds)} so far`
      : `${clock(period.start, now)} \u2013 ${clock(period.end, now)}, ${exactDuration(seconds)}`;
    let slugs = period.slugs.slice(0, MAX_SLUGS_SHOWN).join(", ");
    if (period.slugs.length > MAX_SLUGS_SHOWN) {
      slugs += ` and ${integerFormat.format(period.slugs.length - MAX_SLUGS_SHOWN)} more`;
    }
    return { when, slugs };
  }

  /** "Processing usually takes about 4 min (90% within 7 min), from the last 5 periods." */
  function usualText(summary) {
    const week = isRecord(summary) && isRecord(summary.last_7d) ? summary.last_7d : null;
    if (week === null) return "";
    const count = toNumber(week.count);
    const median = toNumber(week.median_s);
    const p90 = toNumber(week.p90_s);
    if (count === null || count < USUAL_MIN_PERIODS || median === null || p90 === null) return "";
    return (
      `Processing usually takes about ${approxDuration(median)} (90% within ${approxDuration(p90)}), ` +
      `from the last ${integerFormat.format(count)} periods.`
    );
  }

  /** Whether tabs can share one stream: the Web Locks API (secure contexts only) and
   * BroadcastChannel. */
  function sharingAvailable() {
    try {
      return (
        typeof BroadcastChannel === "function" &&
        typeof navigator !== "undefined" &&
        !!navigator.locks &&
        typeof navigator.locks.request === "function"
      );
    } catch (_error) {
      return false;
    }
  }

  function pageVisible() {
    return document.visibilityState !== "hidden";
  }

  function retryAfterMs(response) {
    const value = response.headers.get("Retry-After");
    if (!value) return 0;
    const seconds = Number(value);
    if (Number.isFinite(seconds)) return seconds * 1000;
    const date = Date.parse(value);
    return Number.isFinite(date) ? Math.max(0, date - Date.now()) : 0;
  }

  /** A GET of the relay: never from the cache, with the page's cookies, for a relay that checks
   * the app's session (CORS allow-list). */
  function getFromRelay(url, accept, signal) {
    return fetch(url, { headers: { Accept: accept }, cache: "no-store", credentials: "include", signal });
  }

  /** The answer's JSON body, or null (none, or not JSON). */
  function jsonOrNull(response) {
    return response.json().catch(() => null);
  }

  /** One request at a time, the newest winning: begin() aborts the request in flight and makes
   * its answer stale; an answer counts only while isCurrent(the generation it began in). */
  class LatestRequest {
    constructor() {
      this._generation = 0;
      this._controller = null;
    }

    /** The generation now; cancel() and begin() move on to the next. */
    get generation() {
      return this._generation;
    }

    /** Whether a request is in flight (begun, and neither settled nor cancelled). */
    get pending() {
      return this._controller !== null;
    }

    /** A new request, in a new generation: returns {generation, controller}. */
    begin() {
      this.cancel();
      return { generation: this._generation, controller: this.follow() };
    }

    /** Another request in the current generation (a follow-up; cancel() aborts it too). */
    follow() {
      const controller = new AbortController();
      this._controller = controller;
      return controller;
    }

    isCurrent(generation) {
      return generation === this._generation;
    }

    /** The request of `controller` is over: nothing to abort any more, unless another began. */
    settle(controller) {
      if (this._controller === controller) this._controller = null;
    }

    /** Aborts the request in flight and makes every answer so far stale. */
    cancel() {
      this._generation += 1;
      if (this._controller) this._controller.abort();
      this._controller = null;
    }
  }

  /** A capped, jittered, doubling delay: the n-th try in a row waits between half and all of
   * min·2^n, at most max. */
  class Backoff {
    constructor(minMs, maxMs) {
      this._minMs = minMs;
      this._maxMs = maxMs;
      this._attempt = 0;
    }

    /** A success: the next failure waits the least again. */
    reset() {
      this._attempt = 0;
    }

    next() {
      const ceiling = Math.min(this._maxMs, this._minMs * 2 ** this._attempt);
      this._attempt = Math.min(this._attempt + 1, 16);
      return ceiling / 2 + (Math.random() * ceiling) / 2;
    }
  }

  /** The last 24 hours under the badge (the `timeline` attribute): the history's periods on a
   * bar, with a tooltip per period, and how long processing usually takes. `host` gives
   * wanted() (connected, with the attribute), state() (the badge's) and url(path). */
  class Timeline {
    constructor(root, host) {
      this._root = root;
      this._host = host;
      this._section = root.querySelector(".timeline");
      this._track = root.querySelector(".tl-track");
      this._tip = root.querySelector(".tl-tip");
      this._total = root.querySelector(".tl-total");
      this._usual = root.querySelector(".usual");
      this._periods = [];
      this._segments = new Map(); // period key -> its segment, while drawn
      this._tabKey = null; // the segment in the tab order (the others: arrow keys)
      this._hoverKey = null;
      this._request = new LatestRequest(); // the history's
      this._timer = 0;
      this._tick = 0;
      this._fetchedAt = 0;
      this._rechecks = 0;
      this._track.addEventListener("pointerover", (event) => {
        const segment = event.target.closest(".seg");
        if (segment) {
          this._hoverKey = segment.dataset.key;
          this._showPeriodTip();
        }
      });
      this._track.addEventListener("pointerleave", () => {
        this._hoverKey = null;
        this._showPeriodTip();
      });
      this._track.addEventListener("focusin", (event) => {
        const segment = event.target.closest(".seg");
        if (segment) this._setTabKey(segment.dataset.key);
        this._showPeriodTip();
      });
      this._track.addEventListener("focusout", () => setTimeout(() => this._showPeriodTip(), 0));
      this._track.addEventListener("keydown", (event) => this._onKey(event));
    }

    /** A new state: fetch the history soon (the relay's leader writes the period meanwhile). */
    stateChanged(previous, state) {
      this._rechecks = 0;
      if (state === "stable" || state === "processing") {
        this.schedule(previous === "connecting" || previous === null ? 0 : HISTORY_DELAY_MS);
      }
    }

    start() {
      if (!this._host.wanted()) return;
      clearInterval(this._tick);
      this._tick = setInterval(() => this._onTick(), TIMELINE_TICK_MS);
      if (this._host.state() === "stable" || this._host.state() === "processing") this.schedule(0);
    }

    stop() {
      this._request.cancel();
      clearTimeout(this._timer);
      this._timer = 0;
      clearInterval(this._tick);
      this._tick = 0;
    }

    schedule(delayMs) {
      if (!this._host.wanted()) return;
      clearTimeout(this._timer);
      this._timer = setTimeout(() => {
        this._timer = 0;
        this._load();
      }, delayMs);
    }

    _onTick() {
      const known = this._host.state() === "stable" || this._host.state() === "processing";
      if (known && Date.now() - this._fetchedAt >= HISTORY_REFRESH_MS) this._load();
      else if (!this._section.hidden) this._draw(); // the bar moves with the clock
    }

    async _load() {
      if (!this._host.wanted()) return;
      const { generation, controller } = this._request.begin();
      this._fetchedAt = Date.now();
      let body = null;
      try {
        const response = await getFromRelay(this._host.url(HISTORY_PATH), "application/json", controller.signal);
        if (response.ok) body = await response.json();
        else if (response.body) response.body.cancel().catch(() => {});
      } catch (_error) {
        body = null; // refused, aborted, or not JSON: no timeline, quietly
      }
      if (!this._request.isCurrent(generation)) return;
      this._request.settle(controller);
      if (!isRecord(body) || !Array.isArray(body.periods)) {
        this.hide(); // unavailable (503), unauthorized, or a relay without a history
        return;
      }
      this._periods = parsePeriods(body.periods);
      this._usual.textContent = usualText(body.summary);
      this._usual.hidden = this._usual.textContent === "";
      this._section.hidden = false;
      this._draw();

      // The leader writes the period a moment after the change: ask again while they disagree.
      const open = this._periods.some((period) => period.open);
      const behind = (this._host.state() === "processing" && !open) || (this._host.state() === "stable" && open);
      if (behind && this._rechecks < HISTORY_RECHECKS) {
        this.schedule(1000 * 2 ** this._rechecks);
        this._rechecks += 1;
      }
    }

    hide() {
      this._section.hidden = true;
      this._periods = [];
      this._segments.clear();
      this._track.replaceChildren();
      this._hoverKey = null;
      this._tip.hidden = true;
    }

    _draw() {
      const now = Date.now();
      const from = now - TIMELINE_SPAN_MS;
      const segments = new Map();
      let total = 0;
      for (const period of this._periods) {
        const end = period.open ? now : period.end;
        if (end < from) continue;
        const left = Math.min(100, Math.max(0, (100 * (period.start - from)) / TIMELINE_SPAN_MS));
        const right = Math.min(100, Math.max(left, (100 * (end - from)) / TIMELINE_SPAN_MS));
        total += Math.max(0, (Math.min(end, now) - Math.max(period.start, from)) / 1000);
        let segment = this._segments.get(period.key);
        if (!segment) {
          segment = element("span", "seg");
          segment.dataset.key = period.key;
          segment.setAttribute("role", "listitem");
          segment.tabIndex = -1;
        }
        // Positions through the CSSOM (allowed under a strict style-src, like the progress bars);
        // a very short period still gets a few pixels, kept inside the bar.
        segment.style.left = `min(${left.toFixed(4)}%, calc(100% - 4px))`;
        segment.style.width = `${(right - left).toFixed(4)}%`;
        segment.toggleAttribute("data-open", period.open);
        const { when, slugs } = describePeriod(period, now);
        segment.setAttribute("aria-label", `Processing ${when}${slugs ? `: ${slugs}` : ""}`);
        segments.set(period.key, segment);
      }
      const focused = this._root.activeElement;
      const focusedKey = focused && focused.classList.contains("seg") ? focused.dataset.key : null;
      const before = [...this._segments.keys()];
      const same = segments.size === before.length && [...segments.keys()].every((key, i) => key === before[i]);
      this._segments = segments;
      if (!same) this._track.replaceChildren(...segments.values());
      if (this._tabKey === null || !segments.has(this._tabKey)) this._tabKey = null;
      this._setTabKey(this._tabKey !== null ? this._tabKey : [...segments.keys()].pop() || null);
      if (focusedKey !== null && segments.has(focusedKey) && !same) segments.get(focusedKey).focus();
      if (this._hoverKey !== null && !segments.has(this._hoverKey)) this._hoverKey = null;

      const count = segments.size;
      this._total.textContent = count
        ? `${integerFormat.format(count)} ${count === 1 ? "period" : "periods"}, ${approxDuration(total)} in all`
        : "No processing";
      this._showPeriodTip();
    }

    _setTabKey(key) {
      this._tabKey = key;
      for (const [name, segment] of this._segments) segment.tabIndex = name === key ? 0 : -1;
    }

    _onKey(event) {
      const keys = [...this._segments.keys()];
      const focused = this._root.activeElement;
      const at = focused ? keys.indexOf(focused.dataset.key) : -1;
      if (at < 0) return;
      let next = null;
      if (event.key === "ArrowLeft" || event.key === "ArrowUp") next = Math.max(0, at - 1);
      else if (event.key === "ArrowRight" || event.key === "ArrowDown") next = Math.min(keys.length - 1, at + 1);
      else if (event.key === "Home") next = 0;
      else if (event.key === "End") next = keys.length - 1;
      else if (event.key === "Escape") {
        this._tip.hidden = true;
        return;
      }
      if (next === null) return;
      event.preventDefault();
      this._setTabKey(keys[next]);
      this._segments.get(keys[next]).focus();
    }

    /** The tooltip of the hovered segment, else of the focused one, else none. */
    _showPeriodTip() {
      const focused = this._root.activeElement;
      const focusedKey = focused && focused.classList.contains("seg") ? focused.dataset.key : null;
      const key = this._hoverKey !== null ? this._hoverKey : focusedKey;
      const segment = key !== null ? this._segments.get(key) : null;
      const period = segment ? this._periods.find((candidate) => candidate.key === key) : null;
      for (const [name, other] of this._segments) other.toggleAttribute("data-current", name === key && !!period);
      const tip = this._tip;
      if (!period) {
        tip.hidden = true;
        return;
      }
      const { when, slugs } = describePeriod(period, Date.now());
      const parts = [element("span", "when", when)];
      if (slugs) parts.push(element("span", "slugs", slugs));
      tip.replaceChildren(...parts);
      tip.hidden = false;
      // Centred over the segment, kept inside the bar.
      const width = this._track.clientWidth;
      const center = segment.offsetLeft + segment.offsetWidth / 2;
      const left = Math.max(0, Math.min(width - tip.offsetWidth, center - tip.offsetWidth / 2));
      tip.style.left = `${Math.round(left)}px`;
    }
  }

  /** The details dialog: what each activity runs, its queue figures and estimates, and live
   * progress bars for import jobs. `host` gives connected(), state() (the badge's) and url(path). */
  class DetailsDialog {
    constructor(root, host) {
      this._host = host;
      this._button = root.querySelector(".details");
      this._dialog = root.querySelector("dialog");
      this._content = root.querySelector(".content");
      this._request = new LatestRequest(); // the details'
      this._refreshTimer = 0;
      this._figuresTimer = 0;
      this._jobs = new Map(); // job id -> its rendered elements (one per list), while shown
      this._progress = new Map(); // job id -> latest progress event since the dialog opened
      this._checked = new Map(); // job id -> the state a refresh was asked for (one per state)
      this._button.addEventListener("click", () => this.open());
      root.querySelector(".close").addEventListener("click", () => this._dialog.close());
      this._dialog.addEventListener("click", (event) => {
        if (event.target === this._dialog) this._dialog.close(); // a click on the backdrop
      });
      this._dialog.addEventListener("close", () => this._onClosed());
    }

    /** Opens the dialog and loads the details (never before it is opened). */
    open() {
      if (this._dialog.open) return;
      this._progress.clear();
      this._checked.clear();
      this._dialog.showModal();
      this._load(false);
    }

    close() {
      if (this._dialog.open) this._dialog.close();
    }

    _onClosed() {
      this._request.cancel();
      clearTimeout(this._refreshTimer);
      this._refreshTimer = 0;
      clearTimeout(this._figuresTimer);
      this._figuresTimer = 0;
      this._jobs.clear();
      this._progress.clear();
      this._checked.clear();
      this._content.replaceChildren();
      if (this._host.connected()) this._button.focus();
    }

    scheduleRefresh() {
      if (this._refreshTimer || !this._dialog.open) return;
      this._refreshTimer = setTimeout(() => {
        this._refreshTimer = 0;
        if (this._dialog.open) this._load(true);
      }, REFRESH_DELAY_MS);
    }

    async _load(quiet) {
      const { generation, controller } = this._request.begin();
      clearTimeout(this._figuresTimer);
      this._figuresTimer = 0;
      if (!quiet) this._showLoading();
      let details;
      try {
        const response = await getFromRelay(this._host.url(DETAILS_PATH), "application/json", controller.signal);
        const body = await jsonOrNull(response);
        if (!response.ok) {
          const reason = body && typeof body.error === "string" ? body.error : response.statusText;
          throw new Error(`${reason || "error"} (HTTP ${response.status})`);
        }
        const grouped = body && isRecord(body.activities);
        const listed = body && Array.isArray(body.import_jobs) && Array.isArray(body.analytics_tasks);
        if (!grouped && !listed) throw new Error("unexpected answer from the status service");
        details = body;
      } catch (error) {
        if (!this._request.isCurrent(generation)) return;
        this._request.settle(controller);
        const reason = error && error.name === "TypeError" ? "the status service cannot be reached" : error.message;
        this._showError(reason);
        return;
      }
      if (!this._request.isCurrent(generation) || !this._dialog.open) return;
      this._request.settle(controller);
      this._showDetails(details);
      // Depth and lag move while the state stays the same (an older relay has no signals).
      if (isRecord(details.signals) && this._host.state() === "processing") {
        this._figuresTimer = setTimeout(() => {
          this._figuresTimer = 0;
          if (this._dialog.open) this._load(true);
        }, FIGURES_REFRESH_MS);
      }
    }

    _showLoading() {
      this._jobs.clear();
      this._content.setAttribute("aria-busy", "true");
      const box = element("div", "loading");
      box.append(element("span", "spinner"), element("span", "", "Loading details\u2026"));
      this._content.replaceChildren(box);
    }

    _showError(reason) {
      this._jobs.clear();
      this._content.setAttribute("aria-busy", "false");
      const message = element("p", "error", `Failed to load details: ${reason}.`);
      message.setAttribute("role", "alert");
      const retry = element("button", "retry", "Try again");
      retry.type = "button";
      retry.addEventListener("click", () => this._load(false));
      this._content.replaceChildren(message, retry);
    }

    _showDetails(details) {
      this._jobs.clear();
      const parts = isRecord(details.activities) ? this._activityParts(details) : this._listParts(details);
      this._content.setAttribute("aria-busy", "false");
      this._content.replaceChildren(...parts);

      // Progress that arrived while the request was in flight may be newer than the answer.
      for (const event of this._progress.values()) {
        const known = this._jobs.get(event.id);
        if (!known) continue;
        const eventRows = toNumber(event.imported_rows);
        if (eventRows === null || eventRows >= known[0].importedRows) {
          for (const entry of known) this._applyProgress(entry, event);
        }
      }
      // Jobs heard of while the request was in flight that the answer does not list: ask again
      // (once per job and state), in case they started after the answer's snapshot.
      for (const event of this._progress.values()) {
        if (!this._jobs.has(event.id) && typeof event.state === "string" && event.state) {
          this._recheck(event.id, event.state);
        }
      }
    }

    /** One section per activity, in the relay's order: label, active or idle, its rows. */
    _activityParts(details) {
      const parts = [];
      let anyActive = false;
      let anyRows = false;
      const signals = isRecord(details.signals) ? details.signals : {};
      for (const [name, activity] of Object.entries(details.activities)) {
        if (!isRecord(activity)) continue;
        const active = typeof activity.active === "boolean" ? activity.active : null;
        const items = Array.isArray(activity.items) ? activity.items.filter(isRecord) : null;
        anyActive = anyActive || active === true;
        anyRows = anyRows || (items !== null && items.length > 0);

        const section = element("section", "activity");
        section.dataset.activity = name;
        const heading = element("h3", "activity");
        const title = typeof activity.label === "string" && activity.label ? activity.label : name;
        const titleText = element("span", "title", title);
        titleText.title = title;
        const pill = element("span", "pill", active === true ? "Active" : active === false ? "Idle" : "Unknown");
        pill.toggleAttribute("data-done", active === false);
        pill.toggleAttribute("data-unknown", active === null);
        heading.append(titleText, pill);
        section.append(heading);
        const figures = active === true ? figuresElement(signals[name]) : null;
        if (figures) section.append(figures);
        const eta = etaElement(activity.eta);
        if (eta) section.append(eta);

        if (items !== null && items.length) {
          const list = element("ul");
          for (const row of items) list.append(isJobRow(row) ? this._jobItem(row) : this._itemRow(row));
          section.append(list);
          const total = toNumber(activity.total);
          if (total !== null && total > items.length) {
            section.append(element("p", "more", `and ${integerFormat.format(total - items.length)} more`));
          }
        } else if (active === true) {
          section.append(element("p", "empty", items === null ? "In progress." : "In progress; nothing to list."));
        }
        parts.push(section);
      }
      const failed = typeof details.signals_error === "string" ? details.signals_error.trim() : "";
      if (failed && anyActive) {
        const ending = /[.!?]$/.test(failed) ? "" : ".";
        parts.push(element("p", "figures-error", `Queue figures unavailable: ${failed}${ending}`));
      }
      parts.push(...this._verdict(details, anyActive || anyRows));
      return parts;
    }

    _verdict(details, busy) {
      if (details.system_stable === true) {
        return [element("p", "verdict ok", "System stable: all data processing is complete.")];
      }
      const parts = [];
      const eta = parseEta(details.eta);
      if (eta) {
        const node = element("p", "eta overall", `All processing: ${etaText(eta)}`);
        if (eta.source) node.title = `Estimated from ${eta.source}`;
        parts.push(node);
      }
      if (!busy) parts.push(element("p", "verdict warn", "The system may still be processing background tasks."));
      return parts;
    }

    /** An older relay's answer: import jobs and analytics tasks, no activities. */
    _listParts(details) {
      const jobs = details.import_jobs;
      const tasks = details.analytics_tasks;
      const parts = [];

      if (jobs.length) {
        const items = jobs.map((job) => this._jobItem(job));
        parts.push(this._listSection("jobs", "Import jobs in progress", items));
      } else if (!tasks.length) {
        parts.push(element("p", "empty", "No active import jobs."));
      }

      if (tasks.length) {
        const items = tasks.map((task) => this._taskItem(task));
        parts.push(this._listSection("tasks", "Analytics tasks in progress", items));
      } else if (!jobs.length) {
        parts.push(element("p", "empty", "No active analytics tasks."));
      }

      parts.push(...this._verdict(details, jobs.length + tasks.length > 0));
      return parts;
    }

    _listSection(className, heading, items) {
      const section = element("section", className);
      const list = element("ul");
      for (const item of items) list.append(item);
      section.append(element("h3", "", heading), list);
      return section;
    }

    _jobItem(job) {
      const item = element("li");
      item.dataset.jobId = String(job.id);
      const line = element("div", "line");
      const name = element("span", "name", job.slug || `Import job ${job.id}`);
      name.title = job.slug || "";
      const state = element("span", "pill");
      line.append(name, state);
      item.append(line);
      if (job.description) {
        const description = element("p", "desc", job.description);
        description.title = job.description;
        item.append(description);
      }
      const bar = element("div", "bar");
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-label", `${job.slug || "Import job"} progress`);
      const fill = element("div", "fill");
      bar.append(fill);
      const rows = element("p", "rows");
      const foot = element("div", "foot");
      const eta = etaElement(job.eta);
      if (eta) foot.append(eta);
      foot.append(rows);
      item.append(bar, foot);
      const entry = { item, state, bar, fill, rows, importedRows: 0, jobState: null };
      if (this._jobs.has(job.id)) this._jobs.get(job.id).push(entry);
      else this._jobs.set(job.id, [entry]);
      this._applyProgress(entry, job);
      return entry.item;
    }

    _applyProgress(entry, job) {
      if (typeof job.state === "string" && job.state) {
        entry.jobState = job.state;
        entry.state.textContent = prettyState(job.state);
      }
      entry.state.hidden = !entry.jobState;
      const { total, imported, pct } = jobProgress(job);
      entry.importedRows = imported;
      const hasRows = total !== null && total > 0;
      entry.bar.hidden = !hasRows;
      entry.rows.hidden = !hasRows;
      if (!hasRows) return;
      const shown = pct === null ? 0 : pct;
      entry.bar.setAttribute("aria-valuenow", String(Math.round(shown * 10) / 10));
      entry.bar.setAttribute("aria-valuetext", `${integerFormat.format(imported)} of ${integerFormat.format(total)} rows`);
      entry.fill.style.width = `${shown}%`; // CSSOM, allowed under a strict style-src
      entry.rows.textContent = `${integerFormat.format(imported)} of ${integerFormat.format(total)} rows (${percentFormat.format(shown)}%)`;
    }

    _taskItem(task) {
      const item = this._itemRow(task, `Task ${task.id}`);
      item.dataset.taskId = String(task.id);
      return item;
    }

    /** A compact row of any shape: a title (command, task, name...), a state pill, a few fields. */
    _itemRow(row, fallbackTitle) {
      const item = element("li", "item");
      if (row.id !== undefined && row.id !== null) item.dataset.itemId = String(row.id);
      const titled = firstText(row, TITLE_FIELDS);
      const stated = firstText(row, STATE_FIELDS);
      const title = titled ? titled.value : fallbackTitle || (row.id !== undefined ? `Item ${row.id}` : "Item");
      const line = element("div", "line");
      const name = element("span", "name", title);
      name.title = title;
      line.append(name);
      if (stated) line.append(element("span", "pill", prettyState(stated.value)));
      item.append(line);
      const skip = new Set([titled && titled.field, stated && stated.field, "description", "eta"]);
      const text = typeof row.description === "string" && row.description ? row.description : metaLine(row, skip);
      if (text) {
        const meta = element("p", "desc", text);
        meta.title = text;
        item.append(meta);
      }
      const eta = etaElement(row.eta);
      if (eta) item.append(eta);
      return item;
    }

    onProgress(event) {
      if (!this._dialog.open || !isNumber(event.id)) return;
      this._progress.set(event.id, event);
      const known = this._jobs.get(event.id);
      const state = typeof event.state === "string" && event.state ? event.state : null;
      if (known) {
        const before = known[0].jobState;
        for (const entry of known) this._applyProgress(entry, event);
        // A listed job that changed state may have finished: the relay's list says whether.
        if (state && before && state !== before) this._recheck(event.id, state);
      } else if (state && !this._request.pending) {
        // A job we do not list (yet, or any more). With a request in flight, the answer decides.
        this._recheck(event.id, state);
      }
    }

    /** Fetches the details again for a job's new state, once per job and state. */
    _recheck(id, state) {
      if (this._checked.get(id) === state) return;
      this._checked.set(id, state);
      this.scheduleRefresh();
    }
  }

  /** The badge and its hint, and the host's `state`, `attention` and `polling` attributes. */
  class Badge {
    constructor(root, host) {
      this._host = host;
      this._badge = root.querySelector(".badge");
      this._label = root.querySelector(".label");
      this._tip = root.querySelector(".tip");
      this._state = null;
      this._running = Object.freeze([]);
      this._activities = null;
      this._signals = Object.freeze([]);
      this._signalTick = 0;
      this._viaPolling = false; // the state shown comes from polling (here or in the leader)
    }

    get state() {
      return this._state;
    }

    get running() {
      return this._running;
    }

    get activities() {
      return this._activities;
    }

    get signals() {
      return this._signals;
    }

    /** Shows `state` (and what is running, and what is stalled or overdue); returns whether
     * anything changed. */
    show(state, running, activities, signals) {
      if (
        state === this._state &&
        sameRunning(running, this._running) &&
        sameRunning(activities, this._activities) &&
        sameRunning(signals, this._signals)
      ) {
        return false;
      }
      this._state = state;
      this._running = Object.freeze(running.slice());
      this._activities = activities === null ? null : Object.freeze({ ...activities });
      this._signals = Object.freeze(signals.map((signal) => Object.freeze({ ...signal })));
      this._host.setAttribute("state", state);
      this._showLook();
      clearInterval(this._signalTick);
      this._signalTick = signals.length ? setInterval(() => this._showLook(), SIGNAL_TICK_MS) : 0;
      return true;
    }

    /** Whether the state shown comes from polling (here, or in the leader tab): the hint says so. */
    showPolling(on) {
      if (this._viaPolling === on) return;
      this._viaPolling = on;
      this._host.toggleAttribute("polling", on);
      if (this._state !== null) this._showLook();
    }

    stop() {
      clearInterval(this._signalTick);
      this._signalTick = 0;
    }

    /** The badge and its hint for the current state; stalled work outranks overdue work. */
    _showLook() {
      const look = LOOKS[this._state];
      const signals = this._signals;
      const worst = signals.length ? ATTENTION[signals[0].kind] : null;
      if (worst) this._host.setAttribute("attention", signals[0].kind);
      else this._host.removeAttribute("attention");
      this._badge.dataset.tone = worst ? worst.tone : look.tone;
      this._label.textContent = worst ? worst.label : look.label;
      // The badge keeps its short label; the hint (tooltip, or the sentence under the badge)
      // says what is stalled or overdue, else what is running, and describes the badge to
      // assistive technology.
      const running = this._running;
      let hint;
      if (signals.length) {
        const now = Date.now();
        hint = signals.map((signal) => `${signalText(signal, now)}.`).join(" ");
      } else {
        hint = running.length ? `In progress: ${running.join(", ")}` : look.hint;
      }
      const known = this._state === "stable" || this._state === "processing" || this._state === "unknown";
      if (this._viaPolling && known) hint += `${/[.!?]$/.test(hint) ? "" : "."} ${POLLING_NOTE}`;
      this._tip.textContent = hint;
    }
  }

  /** Reads the relay's state: the live stream (with a watchdog and a capped, jittered backoff),
   * or, while something on the way buffers the stream, polls (see the top of this file). What it
   * reads goes to `sink`: state(data), progress(data), down(refused), transport(polling); the
   * sink also gives shownState(), url(path), absolute(path) and heartbeatTimeoutMs(). */
  class StreamReader {
    constructor(sink) {
      this._sink = sink;
      this._stream = new LatestRequest(); // a new generation on every (re)start and stop: stale loops quit
      this._backoff = new Backoff(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
      this._serverRetryMs = 0;
      this._reconnectTimer = 0;
      this._watchdogTimer = 0;
      this._firstEventTimer = 0;
      this._heard = false; // the current stream has delivered a state
      this._polling = false; // polls (it reads the state for itself or the tabs)
      this._polls = new LatestRequest(); // a new generation when polling stops: a stale round quits
      this._pollTimer = 0;
      this._pollWake = null; // ends a pause of the polls at once, when they stop
      this._probes = new Backoff(PROBE_MIN_MS, PROBE_MAX_MS);
      this.sawBuffering = false; // here or in the leader tab: a new leader polls at once
    }

    /** Whether the state comes from polling now. */
    get polling() {
      return this._polling;
    }

    start() {
      this.stop();
      this._backoff.reset();
      // The stream was held back here or in the tab that led before: poll while trying it.
      if (this.sawBuffering) this._startPolling();
      this._connect();
    }

    stop() {
      this._stream.cancel();
      clearTimeout(this._reconnectTimer);
      clearTimeout(this._watchdogTimer);
      clearTimeout(this._firstEventTimer);
      this._endPolling();
    }

    _armWatchdog(controller) {
      clearTimeout(this._watchdogTimer);
      this._watchdogTimer = setTimeout(() => {
        controller.timedOut = true;
        controller.abort();
      }, this._sink.heartbeatTimeoutMs());
    }

    async _connect() {
      const { generation, controller } = this._stream.begin();
      this._heard = false;
      this._armWatchdog(controller); // also bounds a connect that hangs
      clearTimeout(this._firstEventTimer);
      this._firstEventTimer = setTimeout(
        () => {
          controller.timedOut = true;
          controller.abort();
        },
        Math.min(FIRST_EVENT_TIMEOUT_MS, this._sink.heartbeatTimeoutMs()),
      );
      let minDelayMs = 0;
      let refused = false;
      try {
        const response = await getFromRelay(this._sink.url(LIVE_PATH), "text/event-stream", controller.signal);
        if (!response.ok || !response.body) {
          minDelayMs = retryAfterMs(response);
          refused = response.status === 401 || response.status === 403;
          response.body && response.body.cancel().catch(() => {});
          throw new Error(`HTTP ${response.status}`);
        }
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        const parser = this._parser();
        for (;;) {
          const { value, done } = await reader.read();
          if (done || !this._stream.isCurrent(generation)) break;
          this._armWatchdog(controller); // any byte, `: ping` included, proves the stream alive
          parser(value);
        }
      } catch (_error) {
        // Refused, aborted by the watchdog, reset, or a non-200 answer: all mean "reconnect".
      }
      if (!this._stream.isCurrent(generation)) return; // stopped or restarted meanwhile
      clearTimeout(this._watchdogTimer);
      clearTimeout(this._firstEventTimer);
      controller.abort();
      if (this._polling) {
        this._scheduleProbe(); // a try of the stream that failed: the polls go on
      } else if (!this._heard && controller.timedOut === true) {
        this._checkHeldBack(generation); // connected, perhaps, but no state: buffered on the way?
      } else {
        this._scheduleReconnect(minDelayMs, refused);
      }
    }

    _scheduleReconnect(minDelayMs, refused) {
      this._sink.down(refused);
      const delay = Math.min(BACKOFF_MAX_MS, Math.max(this._backoff.next(), minDelayMs, this._serverRetryMs));
      this._reconnectTimer = setTimeout(() => this._connect(), delay);
    }

    /** The stream delivered no state in time. If the snapshot answers, the stream is held back
     * on the way (a proxy that buffers whole responses): poll, and try the stream now and then.
     * If not, the relay is out of reach: reconnect as for any failure. */
    async _checkHeldBack(generation) {
      const controller = this._stream.follow();
      const answer = await this._getJSON(SNAPSHOT_PATH, SNAPSHOT_TIMEOUT_MS, controller);
      if (!this._stream.isCurrent(generation)) return; // stopped or restarted meanwhile
      this._stream.settle(controller);
      if (answer.status !== 200 || !isStateRecord(answer.body)) {
        this._scheduleReconnect(answer.retryAfterMs, answer.status === 401 || answer.status === 403);
        return;
      }
      const waited = Math.min(FIRST_EVENT_TIMEOUT_MS, this._sink.heartbeatTimeoutMs()) / 1000;
      console.warn(
        `system-status: the live stream ${this._sink.absolute(LIVE_PATH)} delivered nothing in ${waited} s ` +
          "while the snapshot answers: something on the way buffers it (a proxy: nginx " +
          "`proxy_buffering off`, or let the relay's `X-Accel-Buffering: no` through). Polling " +
          `${this._sink.absolute(WAIT_PATH)} instead, and trying the stream again from time to time.`,
      );
      this._probes.reset();
      this._startPolling(answer.body);
      this._scheduleProbe();
    }

    /** Reads the state by polling (for the other tabs too, when leading) until a stream works. */
    _startPolling(data = null) {
      if (this._polling) return;
      this._polling = true;
      this.sawBuffering = true;
      this._sink.transport(true);
      if (data !== null) this._onPolled(data);
      this._pollRounds(this._polls.generation, data !== null);
    }

    /** Stops the polls (the stream closes, or works again). */
    _endPolling() {
      if (!this._polling) return;
      this._polling = false;
      this._polls.cancel();
      clearTimeout(this._pollTimer);
      this._pollTimer = 0;
      if (this._pollWake) this._pollWake();
      this._pollWake = null;
    }

    /** A try of the stream delivered the state: the stream is read again, the polls stop. */
    _backToStream() {
      this._endPolling();
      this.sawBuffering = false;
      this._probes.reset();
      this._sink.transport(false);
      console.info(`system-status: the live stream ${this._sink.absolute(LIVE_PATH)} delivers again; polling stopped.`);
    }

    /** The next try of the stream while polling: 5-10 s, doubling up to 5 min. */
    _scheduleProbe() {
      const delay = this._probes.next();
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = setTimeout(() => this._connect(), delay);
    }

    /** Rounds of: the snapshot (the state, what runs, the signals: what the stream would say),
     * then a long poll of /wait for the other state, answered as soon as a commit changes it.
     * At most two rounds a second; failures back off as the stream's do. */
    async _pollRounds(generation, haveSnapshot) {
      const current = () => this._polling && this._polls.isCurrent(generation);
      let lastRound = haveSnapshot ? Date.now() : 0;
      let askSnapshot = !haveSnapshot;
      const failures = new Backoff(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
      while (current()) {
        if (askSnapshot) {
          await this._pollPause(lastRound + POLL_MIN_GAP_MS - Date.now());
          if (!current()) return;
          lastRound = Date.now();
          const snapshot = await this._pollGet(SNAPSHOT_PATH, SNAPSHOT_TIMEOUT_MS);
          if (!current()) return;
          if (snapshot.status !== 200 || !isStateRecord(snapshot.body)) {
            const refused = snapshot.status === 401 || snapshot.status === 403;
            this._sink.down(refused);
            await this._pollPause(Math.min(BACKOFF_MAX_MS, Math.max(failures.next(), snapshot.retryAfterMs)));
            continue;
          }
          failures.reset();
          this._onPolled(snapshot.body);
        }
        askSnapshot = true;
        const known = this._sink.shownState() === "stable" || this._sink.shownState() === "processing";
        const until = this._sink.shownState() === "stable" ? "processing" : "stable";
        const round = known ? WAIT_ROUND_S : WAIT_ROUND_UNKNOWN_S;
        // end_on=none: a wait for "stable" while work is stalled would answer 409 at once.
        // timeout_status=200: a round that is over answers 200 "timeout", not 408, which
        // Chromium would send again once on a reused connection (a round lasting twice). An
        // older relay ignores the parameter and answers 408: the limit allows for that too.
        const query = `?until=${until}&timeout=${round}s&end_on=none&timeout_status=200`;
        const wait = await this._pollGet(WAIT_PATH + query, (2 * round + 10) * 1000);
        if (!current()) return;
        // 200: changed, already other, or the round is over; 408: the round is over (an older
        // relay); 503: the database is out of reach. Anything else (429 past a share of
        // waiters, an older relay, a proxy's error): the snapshot alone, every few seconds.
        const answered =
          wait.status === 200 ||
          wait.status === 408 ||
          (wait.status === 503 && isRecord(wait.body) && wait.body.result === "unknown");
        if (!answered) await this._pollPause(Math.max(POLL_PLAIN_MS, wait.retryAfterMs));
      }
    }

    _onPolled(data) {
      this._backoff.reset();
      this._sink.state(data);
    }

    async _pollGet(path, timeoutMs) {
      const controller = this._polls.follow();
      const answer = await this._getJSON(path, timeoutMs, controller);
      this._polls.settle(controller);
      return answer;
    }

    _pollPause(delayMs) {
      if (!(delayMs > 0)) return Promise.resolve();
      return new Promise((resolve) => {
        this._pollWake = resolve;
        this._pollTimer = setTimeout(() => {
          this._pollTimer = 0;
          this._pollWake = null;
          resolve();
        }, delayMs);
      });
    }

    /** GET a JSON answer: {status (0: no answer in time, or refused), body, retryAfterMs}. */
    async _getJSON(path, timeoutMs, controller) {
      const timer = setTimeout(() => controller.abort(), timeoutMs);
      try {
        const response = await getFromRelay(this._sink.url(path), "application/json", controller.signal);
        const body = await jsonOrNull(response);
        return { status: response.status, body, retryAfterMs: retryAfterMs(response) };
      } catch (_error) {
        return { status: 0, body: null, retryAfterMs: 0 };
      } finally {
        clearTimeout(timer);
      }
    }

    /** An incremental text/event-stream parser (the WHATWG rules this relay needs). */
    _parser() {
      let buffer = "";
      let data = [];
      let type = "";
      return (chunk) => {
        buffer += chunk;
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (data.length) this._dispatch(type || "message", data.join("\n"));
            data = [];
            type = "";
            continue;
          }
          if (line.startsWith(":")) continue; // a comment: the heartbeat
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") data.push(value);
          else if (field === "event") type = value;
          else if (field === "retry" && /^\d+$/.test(value)) this._serverRetryMs = Number(value);
        }
      };
    }

    _dispatch(type, text) {
      let data;
      try {
        data = JSON.parse(text);
      } catch (_error) {
        return; // not ours; the stream stays up
      }
      if (data === null || typeof data !== "object") return;
      if (type === "message") {
        if (!this._heard) {
          this._heard = true;
          clearTimeout(this._firstEventTimer);
          if (this._polling) this._backToStream();
        }
        this._backoff.reset();
        this._sink.state(data);
      } else if (type === "import_job_progress") {
        this._sink.progress(data);
      }
    }
  }

  /** One stream for all the tabs of an origin (see the top of this file): an election over Web
   * Locks, the leader's reader rebroadcast on a BroadcastChannel, and when a hidden tab lets go.
   * `host` gives running(), url(path), absolute(path), heartbeatTimeoutMs(), hiddenGraceMs(),
   * shownState(), and takes onState(data), onProgress(data), onDown(refused), markLost(),
   * showPolling(on) and clearLost() (the stream opens or closes: no pending "unreachable"). */
  class TabShare {
    constructor(host) {
      this._host = host;
      this._shared = false; // this element takes part in an election (else: a stream of its own)
      this._shareName = ""; // the lock's and the channel's name
      this._channel = null;
      this._lockAbort = null; // while waiting for the lock: withdraws the request
      this._releaseLock = null; // while leading: lets the lock go
      this._live = false; // this element reads the stream now (as the leader, or on its own)
      this._linkUp = false; // ...and the stream has delivered a state since it (re)connected
      this._lastData = null; // the last state event, for a newcomer's request
      this._syncId = ""; // the newcomer's request that the leader's answer must name
      this._hiddenTimer = 0;
      this._reader = new StreamReader({
        state: (data) => {
          this._linkUp = true;
          this._lastData = data;
          this._post({ type: "state", data });
          host.onState(data);
        },
        progress: (data) => {
          this._post({ type: "progress", data });
          host.onProgress(data);
        },
        down: (refused) => {
          this._linkUp = false;
          this._post({ type: "down", refused });
          host.onDown(refused);
        },
        transport: (polling) => {
          this._post({ type: "transport", polling });
          host.showPolling(polling);
        },
        shownState: host.shownState,
        url: host.url,
        absolute: host.absolute,
        heartbeatTimeoutMs: host.heartbeatTimeoutMs,
      });
    }

    /** Starts reading the state: as a candidate for the lock, or, without sharing, on our own. */
    join() {
      let url = this._host.url(LIVE_PATH);
      try {
        url = new URL(url, document.baseURI).href; // "" and the page's origin are one stream
      } catch (_error) {
        // not a URL: the fetch will fail and retry, each element on its own name
      }
      this._shareName = SHARE_PREFIX + url;
      this._shared = sharingAvailable();
      if (this._shared) {
        try {
          this._channel = new BroadcastChannel(this._shareName);
        } catch (_error) {
          this._shared = false;
        }
      }
      if (!this._shared) {
        this._openStream();
        this.followVisibility();
        return;
      }
      this._channel.onmessage = (event) => this._onShared(event.data);
      this._askForState();
      // A page opened in the background takes the lock only if no tab holds it (then it reads
      // the stream for its grace period); otherwise it listens until it is shown.
      this._stand(!pageVisible());
      this.followVisibility();
    }

    /** Stops reading the state (removed from the page, or another `src`). */
    leave() {
      clearTimeout(this._hiddenTimer);
      this._hiddenTimer = 0;
      this._sit();
      this._closeStream();
      if (this._channel) {
        this._channel.onmessage = null;
        this._channel.close();
      }
      this._channel = null;
      this._shared = false;
      this._lastData = null;
      this._syncId = "";
      this._reader.sawBuffering = false; // another URL may take another way
      this._host.showPolling(false);
    }

    /** Waits for the lock (or, with `ifFree`, takes it only if no tab holds it), then leads. */
    _stand(ifFree) {
      if (!this._shared || this._lockAbort || this._releaseLock) return;
      const abort = new AbortController();
      abort.queued = !ifFree; // a request in the lock's queue, which a hidden tab withdraws
      this._lockAbort = abort;
      const options = ifFree ? { ifAvailable: true } : { signal: abort.signal };
      let request;
      try {
        request = navigator.locks.request(this._shareName, options, (lock) => {
          if (this._lockAbort !== abort || abort.signal.aborted) return undefined; // withdrawn
          this._lockAbort = null;
          if (lock === null) {
            // Held by another tab: we listen to it (and queue, if we were shown meanwhile).
            if (pageVisible()) this._stand(false);
            return undefined;
          }
          return new Promise((release) => {
            this._releaseLock = release;
            this._lead();
          });
        });
      } catch (error) {
        request = Promise.reject(error);
      }
      request.catch(() => {
        if (this._lockAbort !== abort) return; // withdrawn (an AbortError), or already leading
        // Locks refused (an opaque origin, say): a stream of our own, as without sharing.
        this._lockAbort = null;
        this.leave();
        this._openStream();
        this.followVisibility();
      });
    }

    /** Stops waiting for the lock, or, while leading, closes the stream and lets the lock go. */
    _sit() {
      if (this._lockAbort) {
        this._lockAbort.abort();
        this._lockAbort = null;
      }
      if (this._releaseLock) {
        const release = this._releaseLock;
        this._releaseLock = null;
        this._closeStream();
        release();
      }
    }

    _lead() {
      this._openStream();
      this.followVisibility(); // granted while hidden: the grace period runs from now
    }

    get _leading() {
      return this._releaseLock !== null;
    }

    _openStream() {
      this._live = true;
      this._linkUp = false;
      this._host.clearLost();
      this._reader.start();
    }

    _closeStream() {
      this._live = false;
      this._linkUp = false;
      this._host.clearLost();
      this._reader.stop();
    }

    /** Shown: read the state again (lead, or queue for the lock). Hidden: let go (a leader, or a
     * stream of its own, after the grace period; a tab waiting for the lock at once). */
    followVisibility() {
      if (!this._host.running()) return;
      if (pageVisible()) {
        clearTimeout(this._hiddenTimer);
        this._hiddenTimer = 0;
        if (!this._shared) {
          if (!this._live) this._openStream();
        } else if (!this._leading && !this._lockAbort) {
          this._askForState(); // in case messages were missed while frozen
          this._stand(false);
        }
        return;
      }
      if (this._shared && this._lockAbort && this._lockAbort.queued) this._sit(); // hidden tabs do not queue
      if (this._live && !this._hiddenTimer) {
        this._hiddenTimer = setTimeout(() => {
          this._hiddenTimer = 0;
          if (!pageVisible()) this.letGo();
        }, this._host.hiddenGraceMs());
      }
    }

    /** Closes the stream now (hidden long enough, frozen, or into the back/forward cache). */
    letGo() {
      clearTimeout(this._hiddenTimer);
      this._hiddenTimer = 0;
      if (this._shared) this._sit();
      else this._closeStream();
    }

    /** Sends to the other tabs, when we read the stream for them. */
    _post(message) {
      if (!this._channel || !this._leading) return;
      try {
        this._channel.postMessage(message);
      } catch (_error) {
        // a closed channel: nobody left to tell
      }
    }

    /** A newcomer (or a tab shown again) asks the leader for the current state. */
    _askForState() {
      if (!this._channel) return;
      this._syncId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
      try {
        this._channel.postMessage({ type: "sync", id: this._syncId });
      } catch (_error) {
        // closed meanwhile
      }
    }

    _onShared(message) {
      if (!this._host.running() || !isRecord(message) || typeof message.type !== "string") return;
      if (message.type === "sync") {
        if (this._leading && typeof message.id === "string") {
          this._post({
            type: "snapshot",
            to: message.id,
            shown: this._host.shownState(),
            up: this._linkUp,
            data: this._lastData,
            polling: this._reader.polling,
          });
        }
        return;
      }
      if (this._leading) return; // the leader believes its own stream
      if (message.type === "state" && isRecord(message.data)) {
        this._lastData = message.data;
        this._host.onState(message.data);
      } else if (message.type === "progress" && isRecord(message.data)) {
        this._host.onProgress(message.data);
      } else if (message.type === "down") {
        this._host.onDown(message.refused === true);
      } else if (message.type === "transport") {
        this._reader.sawBuffering = message.polling === true;
        this._host.showPolling(this._reader.sawBuffering);
      } else if (message.type === "snapshot" && message.to === this._syncId && this._syncId) {
        this._syncId = "";
        this._reader.sawBuffering = message.polling === true;
        this._host.showPolling(this._reader.sawBuffering);
        const shown = message.shown;
        if ((shown === "stable" || shown === "processing" || shown === "unknown") && isRecord(message.data)) {
          this._lastData = message.data;
          this._host.onState(message.data);
          if (message.up !== true) this._host.markLost();
        } else if (shown === "unreachable" || shown === "unauthorized") {
          this._host.onDown(shown === "unauthorized");
        }
      }
    }
  }

  const WORDING = Object.freeze({
    humanDuration: exactDuration,
    etaText: (value) => {
      const eta = parseEta(value);
      return eta === null ? null : etaText(eta);
    },
  });

  class SystemStatus extends HTMLElement {
    static get observedAttributes() {
      return ["src", "heartbeat-timeout", "timeline"];
    }

    /** The pure wording helpers, for a test to compare with the relay's (relay/state/eta.py). */
    static get wording() {
      return WORDING;
    }

    constructor() {
      super();
      const root = this.attachShadow({ mode: "open" });
      const sheet = styleSheet();
      if (sheet) {
        root.adoptedStyleSheets = [sheet];
      } else {
        // Older browsers only; a strict style-src blocks this, the badge then shows unstyled.
        root.appendChild(element("style", "", CSS));
      }
      const template = document.createElement("template");
      template.innerHTML = TEMPLATE;
      root.appendChild(template.content);

      this._badge = new Badge(root, this);

      this._running = false;
      this._since = null;
      this._graceTimer = 0; // a lost stream shows "unreachable" when it runs out
      this._share = new TabShare({
        running: () => this._running,
        url: (path) => this._url(path),
        absolute: (path) => this._absolute(path),
        heartbeatTimeoutMs: () => this._heartbeatTimeoutMs(),
        hiddenGraceMs: () => this._hiddenGraceMs(),
        shownState: () => this._badge.state,
        onState: (data) => this._onState(data),
        onProgress: (data) => this._details.onProgress(data),
        onDown: (refused) => this._onDown(refused),
        markLost: () => this._markLost(),
        showPolling: (on) => this._badge.showPolling(on),
        clearLost: () => this._clearGrace(),
      });
      this._onVisibility = () => this._share.followVisibility();
      this._onPageHide = (event) => {
        if (event.type === "freeze" || event.persisted) this._share.letGo();
      };
      this._onPageShow = (event) => {
        if (event.type === "resume" || event.persisted) this._share.followVisibility();
      };

      this._timeline = new Timeline(root, {
        wanted: () => this._running && this.hasAttribute("timeline"),
        state: () => this._badge.state,
        url: (path) => this._url(path),
      });

      this._details = new DetailsDialog(root, {
        connected: () => this.isConnected,
        state: () => this._badge.state,
        url: (path) => this._url(path),
      });
      // No attribute and no event here: a constructor must not touch its host
      // (document.createElement would throw). The first render is in connectedCallback.
    }

    /** connecting | stable | processing | unknown | unreachable | unauthorized */
    get state() {
      return this._badge.state;
    }

    /** true, false, or null while unknown. */
    get stable() {
      const state = this._badge.state;
      return state === "stable" ? true : state === "processing" ? false : null;
    }

    /** When the current state began (ISO 8601), as the relay reported it. */
    get since() {
      return this._since;
    }

    /** The labels of the activities running now (config order); empty unless processing. */
    get running() {
      return this._badge.running;
    }

    /** Each activity's state as the relay reported it ({name: true | false | null}), or null. */
    get activities() {
      return this._badge.activities;
    }

    /** The stalled and overdue work ([{kind, activity, label, since, bound_s}]); empty unless processing. */
    get signals() {
      return this._badge.signals;
    }

    connectedCallback() {
      this._running = true;
      if (this._badge.state === null) this._render("connecting");
      document.addEventListener("visibilitychange", this._onVisibility);
      document.addEventListener("freeze", this._onPageHide);
      document.addEventListener("resume", this._onPageShow);
      window.addEventListener("pagehide", this._onPageHide);
      window.addEventListener("pageshow", this._onPageShow);
      this._share.join();
      this._timeline.start();
    }

    disconnectedCallback() {
      this._running = false;
      document.removeEventListener("visibilitychange", this._onVisibility);
      document.removeEventListener("freeze", this._onPageHide);
      document.removeEventListener("resume", this._onPageShow);
      window.removeEventListener("pagehide", this._onPageHide);
      window.removeEventListener("pageshow", this._onPageShow);
      this._share.leave();
      this._timeline.stop();
      this._badge.stop();
      this._details.close();
    }

    attributeChangedCallback(name, oldValue, newValue) {
      // Called for every attribute already present when the element upgrades, before
      // connectedCallback: only a later change of `src` means a new connection.
      // (heartbeat-timeout is read each time the watchdog is armed, hidden-grace each time the
      // page is hidden.)
      if (!this._running || oldValue === newValue) return;
      if (name === "src") {
        this._share.leave(); // another URL: another election
        this._share.join();
        this._timeline.schedule(0);
      } else if (name === "timeline") {
        if (newValue === null) {
          this._timeline.stop();
          this._timeline.hide();
        } else if (oldValue === null) {
          this._timeline.start();
        }
      }
    }

    /** Opens the details dialog and loads the details (never before it is opened). */
    openDetails() {
      this._details.open();
    }

    _url(path) {
      const base = (this.getAttribute("src") || "").trim().replace(/\/+$/, "");
      return base + path;
    }

    /** For a console line: the URL as the browser asks it. */
    _absolute(path) {
      try {
        return new URL(this._url(path), document.baseURI).href;
      } catch (_error) {
        return this._url(path);
      }
    }

    _heartbeatTimeoutMs() {
      const seconds = Number(this.getAttribute("heartbeat-timeout"));
      return (Number.isFinite(seconds) && seconds > 0 ? seconds : DEFAULT_HEARTBEAT_TIMEOUT_S) * 1000;
    }

    _hiddenGraceMs() {
      const value = this.getAttribute("hidden-grace");
      const seconds = value === null || value.trim() === "" ? NaN : Number(value);
      return (Number.isFinite(seconds) && seconds >= 0 ? seconds : DEFAULT_HIDDEN_GRACE_S) * 1000;
    }

    _clearGrace() {
      clearTimeout(this._graceTimer);
      this._graceTimer = 0;
    }

    /** The stream is down: refused (401/403), or lost (the last state is kept for a moment). */
    _onDown(refused) {
      if (refused) {
        this._clearGrace();
        this._render("unauthorized");
      } else {
        this._markLost();
      }
    }

    _markLost() {
      const shown = this._badge.state;
      if (shown === "connecting" || shown === "unreachable" || shown === "unauthorized") {
        this._render("unreachable");
        return;
      }
      if (this._graceTimer) return;
      this._graceTimer = setTimeout(() => {
        this._graceTimer = 0;
        this._render("unreachable");
      }, GRACE_MS);
    }

    _onState(data) {
      this._clearGrace();
      this._since = typeof data.since === "string" ? data.since : null;
      const state = stateOf(data);
      // An older relay sends neither field: nothing is named, the hint stays generic.
      const running =
        state === "processing" && Array.isArray(data.running)
          ? data.running.filter((label) => typeof label === "string" && label.trim() !== "")
          : [];
      let activities = null;
      if (isRecord(data.activities)) {
        activities = {};
        for (const [name, active] of Object.entries(data.activities)) {
          activities[name] = typeof active === "boolean" ? active : null;
        }
      }
      const signals = state === "processing" ? parseSignals(data) : [];
      if (this._render(state, running, activities, signals)) this._details.scheduleRefresh();
    }

    /** Shows `state` (and what is running, and what is stalled or overdue), and tells the page;
     * returns whether anything changed. */
    _render(state, running = [], activities = null, signals = []) {
      const previous = this._badge.state;
      if (!this._badge.show(state, running, activities, signals)) return false;
      this.dispatchEvent(
        new CustomEvent("system-status-change", {
          detail: {
            state,
            stable: this.stable,
            since: this._since,
            running: this._badge.running,
            activities: this._badge.activities,
            signals: this._badge.signals,
          },
          bubbles: true,
          composed: true,
        }),
      );
      if (state !== previous) this._timeline.stateChanged(previous, state);
      return true;
    }
  }

  window.customElements.define("system-status", SystemStatus);
})();
