// A tiny app page: the indicator (and its details modal) in a header, and what the hook
// returns, for people trying it out. Served behind the same proxy as the relay, so the hook's
// default URLs (/api/system-status/live and /details) are on the page's own origin.
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { SystemStatusIndicator } from "../src/SystemStatusIndicator";
import { useSystemStability } from "../src/useSystemStability";

function HookState() {
  const { isStable, loading, error, status, stale, connection, unauthorized } = useSystemStability();
  const rows: [string, string][] = [
    ["isStable", String(isStable)],
    ["loading", String(loading)],
    ["error", error ?? "null"],
    ["connection", connection],
    ["stale", String(stale)],
    ["unauthorized", unauthorized ?? "null"],
    ["seq", status === null ? "null" : String(status.seq)],
    ["running", status === null ? "" : status.running.join(", ")],
  ];
  return (
    <dl className="hook-state">
      {rows.map(([name, value]) => (
        <div key={name} data-field={name}>
          <dt>{name}</dt>
          <dd>{value}</dd>
        </div>
      ))}
    </dl>
  );
}

function App() {
  return (
    <>
      <header>
        <span className="app-name">An app</span>
        <SystemStatusIndicator />
      </header>
      <main>
        <h1>useSystemStability</h1>
        <p>What the hook returns (the badge above and this list share one stream):</p>
        <HookState />
      </main>
    </>
  );
}

const root = document.getElementById("root");
if (root === null) throw new Error("no #root element");
createRoot(root).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
