// Server rendering, checked: the indicator (hook, badge, modal) rendered with react-dom/server
// in Node, where there is no window (and an EventSource made would throw). It must
// render what the browser's first render does (loading: "Connecting…"), so hydration matches.
import { rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = fileURLToPath(new URL(".", import.meta.url));
const entry = `
import { createElement } from "react";
import { renderToString } from "react-dom/server";
import { SystemStatusIndicator } from "./src/SystemStatusIndicator";
export const html = renderToString(createElement(SystemStatusIndicator));
`;
const result = await build({
  stdin: { contents: entry, resolveDir: here, loader: "tsx" },
  bundle: true,
  platform: "node",
  format: "cjs",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  write: false,
  logLevel: "warning",
});
// Node 20 has no EventSource; one that throws makes sure none is made on the server.
globalThis.EventSource = function EventSource() {
  throw new Error("an EventSource was made while rendering on the server");
};
const file = join(tmpdir(), `stability-relay-ssr-${process.pid}.cjs`);
writeFileSync(file, result.outputFiles[0].text);
let html;
try {
  ({ html } = createRequire(import.meta.url)(file));
} finally {
  rmSync(file, { force: true });
}
const badge = /<span class="system-status-badge" data-state="loading"[^>]*>Connecting…<\/span>/;
if (!badge.test(html)) {
  console.error(`check-ssr: the server rendered an unexpected badge:\n${html}`);
  process.exit(1);
}
