/**
 * The planning document's details modal on top of useSystemStability: a "Details" button and
 * a native <dialog> (focus kept inside, Escape closes it, focus returns to the button) that
 * fetches `/api/system-status/details` when opened, never before.
 *
 * It stays in step with the badge. Each answer names the state it agrees with (`seq`, the
 * stream's `id:`) and says `ahead` when the database had already moved past that state. While
 * the dialog is open, a state on the stream newer than the answer's (`seq` past it: a change
 * of state, or of what runs) fetches the details again, once per such state; the answer shown
 * stays until the new one arrives. Several relays behind one proxy number their states
 * apart, so a state whose verdict differs from the answer's also fetches again.
 */
import { useEffect, useId, useRef, useState } from "react";
import type { SystemStabilityOptions } from "./useSystemStability";
import { useSystemStability } from "./useSystemStability";

export const DEFAULT_DETAILS_URL = "/api/system-status/details";

type Row = Record<string, unknown>;

export interface Activity {
  label: string;
  active: boolean | null;
  items: Row[] | null;
  total: number | null;
}

/** The details answer, read defensively (any field may be missing from an older relay). */
export interface Details {
  importJobs: Row[];
  analyticsTasks: Row[];
  activities: [string, Activity][] | null;
  systemStable: boolean | null;
  seq: number | null;
  ahead: boolean;
}

export interface SystemStatusModalProps {
  options?: SystemStabilityOptions;
  detailsUrl?: string;
}

export function SystemStatusModal({ options, detailsUrl = DEFAULT_DETAILS_URL }: SystemStatusModalProps) {
  const { status } = useSystemStability(options);
  const credentials: RequestCredentials = options?.withCredentials ? "include" : "same-origin";
  const [open, setOpen] = useState(false);
  const [details, setDetails] = useState<Details | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  // Each request: a number that changes to fetch again, and the stream's state when asked.
  const [request, setRequest] = useState({ count: 0, liveSeq: null as number | null });
  const dialog = useRef<HTMLDialogElement>(null);
  const title = useId();

  useEffect(() => {
    const node = dialog.current;
    if (node === null) return;
    if (open && !node.open) node.showModal();
    if (!open && node.open) node.close();
  }, [open]);

  useEffect(() => {
    if (!open) {
      setDetails(null);
      setError(null);
      return;
    }
    const controller = new AbortController();
    setLoading(true);
    fetchDetails(detailsUrl, credentials, controller.signal).then(
      (answer) => {
        if (controller.signal.aborted) return;
        setDetails(answer);
        setError(null);
        setLoading(false);
      },
      (reason: unknown) => {
        if (controller.signal.aborted) return;
        setError(reason instanceof Error ? reason.message : String(reason));
        setDetails(null);
        setLoading(false);
      },
    );
    return () => controller.abort();
  }, [open, request.count, detailsUrl, credentials]);

  // The stream has moved past the state the details agree with: ask again (once per state).
  const liveSeq = status?.seq ?? null;
  const liveStable = status?.stable ?? null;
  useEffect(() => {
    if (!open || loading || details === null || liveSeq === null) return;
    if (liveSeq === request.liveSeq) return;
    const behind = details.seq === null || liveSeq > details.seq;
    const disagrees = liveStable !== null && details.systemStable !== liveStable;
    if (behind || disagrees) setRequest(({ count }) => ({ count: count + 1, liveSeq }));
  }, [open, loading, details, liveSeq, liveStable, request.liveSeq]);

  const show = () => {
    setRequest(({ count }) => ({ count: count + 1, liveSeq }));
    setOpen(true);
  };

  return (
    <>
      <button type="button" className="system-status-details-button" aria-haspopup="dialog" onClick={show}>
        Details
      </button>
      <dialog
        ref={dialog}
        className="system-status-dialog"
        aria-labelledby={title}
        onClose={() => setOpen(false)}
      >
        <header>
          <h2 id={title}>System Status Details</h2>
          <button type="button" className="close" aria-label="Close" onClick={() => setOpen(false)}>
            ×
          </button>
        </header>
        <div className="content" aria-busy={loading}>
          {open && details === null && error === null && <p className="loading">Loading details…</p>}
          {open && error !== null && (
            <>
              <p className="error" role="alert">
                Failed to load details: {error}.
              </p>
              <button type="button" onClick={() => setRequest(({ count }) => ({ count: count + 1, liveSeq }))}>
                Try again
              </button>
            </>
          )}
          {open && details !== null && <DetailsView details={details} />}
        </div>
      </dialog>
    </>
  );
}

function DetailsView({ details }: { details: Details }) {
  // An older relay's answer has no activities: the seed's two lists.
  const listed = (label: string, items: Row[]): Activity => ({ label, active: null, items, total: null });
  const groups = details.activities ?? [
    ["import_jobs", listed("Import jobs in progress", details.importJobs)],
    ["analytics_tasks", listed("Analytics tasks in progress", details.analyticsTasks)],
  ];
  const busy = groups.some(([, group]) => group.active === true || (group.items?.length ?? 0) > 0);
  return (
    <>
      {groups.map(([name, group]) => (
        <section key={name} data-activity={name}>
          <h3>
            {group.label}
            {group.active !== null && (
              <span className="pill" data-active={group.active}>
                {group.active ? "Active" : "Idle"}
              </span>
            )}
          </h3>
          {group.items !== null && group.items.length > 0 && (
            <ul>
              {group.items.map((row, index) => (
                <RowView key={String(row.id ?? index)} row={row} />
              ))}
            </ul>
          )}
          {group.total !== null && group.items !== null && group.total > group.items.length && (
            <p className="more">and {group.total - group.items.length} more</p>
          )}
          {group.active === null && group.items?.length === 0 && <p className="empty">None.</p>}
        </section>
      ))}
      {details.systemStable === true && <p className="verdict ok">System Stable: All data processing complete.</p>}
      {details.systemStable !== true && !busy && (
        <p className="verdict warn">System may still be processing background tasks.</p>
      )}
    </>
  );
}

const numbers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

function RowView({ row }: { row: Row }) {
  const name = text(row.slug) ?? text(row.command) ?? text(row.name) ?? `#${String(row.id ?? "?")}`;
  const state = text(row.state)?.replace(/_/g, " ");
  const total = number(row.total_rows);
  const imported = number(row.imported_rows) ?? 0;
  let pct = number(row.progress_pct);
  if ((pct === null || (pct === 0 && imported > 0)) && total) pct = (100 * imported) / total;
  return (
    <li data-id={String(row.id ?? "")}>
      <div className="row">
        <span className="name" title={name}>
          {name}
        </span>
        {state && <span className="state">{state}</span>}
      </div>
      {total !== null && total > 0 && pct !== null && (
        <>
          <progress max={100} value={Math.min(100, Math.max(0, pct))} />
          <div className="rows">
            {numbers.format(imported)} of {numbers.format(total)} rows ({numbers.format(pct)}%)
          </div>
        </>
      )}
    </li>
  );
}

async function fetchDetails(
  url: string,
  credentials: RequestCredentials,
  signal: AbortSignal,
): Promise<Details> {
  const headers = { Accept: "application/json" };
  let response: Response;
  try {
    response = await fetch(url, { headers, cache: "no-store", credentials, signal });
  } catch (error) {
    if (signal.aborted) throw error;
    throw new Error("the status service cannot be reached");
  }
  const body: unknown = await response.json().catch(() => null);
  if (!response.ok) {
    const said = isRecord(body) ? text(body.error) : null;
    const reason = said ?? (response.statusText || "error");
    throw new Error(`${reason} (HTTP ${response.status})`);
  }
  const details = readDetails(body);
  if (details === null) throw new Error("unexpected answer from the status service");
  return details;
}

/** The answer as the view needs it, or `null` when it is no details answer at all. */
export function readDetails(body: unknown): Details | null {
  if (!isRecord(body)) return null;
  const importJobs = rows(body.import_jobs);
  const analyticsTasks = rows(body.analytics_tasks);
  let activities: [string, Activity][] | null = null;
  if (isRecord(body.activities)) {
    activities = [];
    for (const [name, group] of Object.entries(body.activities)) {
      if (!isRecord(group)) continue;
      activities.push([
        name,
        {
          label: text(group.label) ?? name,
          active: typeof group.active === "boolean" ? group.active : null,
          items: Array.isArray(group.items) ? rows(group.items) : null,
          total: number(group.total),
        },
      ]);
    }
  }
  const listed = Array.isArray(body.import_jobs) && Array.isArray(body.analytics_tasks);
  if (activities === null && !listed) return null;
  return {
    importJobs,
    analyticsTasks,
    activities,
    systemStable: typeof body.system_stable === "boolean" ? body.system_stable : null,
    seq: number(body.seq),
    ahead: body.ahead === true,
  };
}

function rows(value: unknown): Row[] {
  return Array.isArray(value) ? value.filter(isRecord) : [];
}

function text(value: unknown): string | null {
  return typeof value === "string" && value.trim() !== "" ? value : null;
}

function number(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function isRecord(value: unknown): value is Row {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
