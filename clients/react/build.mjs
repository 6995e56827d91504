// Bundles the example page (example/main.tsx, its HTML and CSS) into dist/, or into the
// directory given as the first argument (tests/browser/test_react_hook.py bundles into one of
// its own, so concurrent runs never share files). Typechecking is `tsc --noEmit`
// (npm run typecheck): esbuild only strips the types.
import { copyFile, mkdir, rm } from "node:fs/promises";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = fileURLToPath(new URL(".", import.meta.url));
const out = process.argv[2] ? resolve(process.argv[2]) : resolve(here, "dist");
if (!process.argv[2]) await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [resolve(here, "example/main.tsx")],
  bundle: true,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  minify: true,
  sourcemap: true,
  define: { "process.env.NODE_ENV": '"production"' },
  outfile: resolve(out, "main.js"),
  logLevel: "warning",
});
for (const file of ["index.html", "example.css"]) {
  await copyFile(resolve(here, "example", file), resolve(out, file));
}
