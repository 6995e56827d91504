/**
 * The planning document's indicator on top of useSystemStability: a badge, and the details
 * modal's button beside it. An example to copy into an app and restyle (class names below,
 * `data-state` on the badge); it needs nothing but React.
 *
 * Unlike the seed's, it never says "Processing Data" for a state it does not know: `null`
 * (the relay has no database, or the page has no stream) is "Status Unavailable".
 */
import type { SystemStability, SystemStabilityOptions } from "./useSystemStability";
import { useSystemStability } from "./useSystemStability";
import { SystemStatusModal } from "./SystemStatusModal";

export type BadgeState = "loading" | "stable" | "processing" | "unknown" | "unauthorized";

export interface Badge {
  state: BadgeState;
  label: string;
  /** The sentence the seed's tooltip said, and what runs or what is wrong. */
  hint: string;
}

/** What the badge says for what the hook says. */
export function describe(stability: SystemStability): Badge {
  const { isStable, loading, error, status, unauthorized } = stability;
  if (isStable === true) {
    return { state: "stable", label: "System Stable", hint: "All data processing is complete" };
  }
  if (isStable === false) {
    const running = status?.running ?? [];
    const hint = running.length
      ? `Data is currently being processed. In progress: ${running.join(", ")}`
      : "Data is currently being processed";
    return { state: "processing", label: "Processing Data", hint };
  }
  if (loading) return { state: "loading", label: "Connecting…", hint: "Connecting to the status service" };
  if (unauthorized !== null) {
    return { state: "unauthorized", label: "Sign In to See Status", hint: error ?? unauthorized };
  }
  const hint =
    error ??
    (status?.stable === null
      ? "The status service cannot reach the database: the state is unknown"
      : "The state is unknown");
  return { state: "unknown", label: "Status Unavailable", hint };
}

export interface SystemStatusIndicatorProps {
  /** Passed to useSystemStability (the badge and the modal share one stream). */
  options?: SystemStabilityOptions;
  /** The details API; default `/api/system-status/details`. */
  detailsUrl?: string;
  /** Show the hint under the badge instead of only as its tooltip. */
  inlineHint?: boolean;
}

export function SystemStatusIndicator({ options, detailsUrl, inlineHint = false }: SystemStatusIndicatorProps) {
  const stability = useSystemStability(options);
  const badge = describe(stability);
  return (
    <div className="system-status">
      <span
        className="system-status-badge"
        data-state={badge.state}
        data-stale={stability.stale || undefined}
        role="status"
        aria-live="polite"
        title={badge.hint}
      >
        {badge.label}
      </span>
      <SystemStatusModal options={options} detailsUrl={detailsUrl} />
      {inlineHint && <p className="system-status-hint">{badge.hint}</p>}
    </div>
  );
}
