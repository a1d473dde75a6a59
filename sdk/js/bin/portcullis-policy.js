#!/usr/bin/env node
// `portcullis-policy build [DIR] [-o OUT]`: a policy folder (DIR/policy.js and the modules it
// imports) → a WebAssembly component, with the contract shipped in this package.
//
// DIR defaults to the current folder, OUT to DIR/<DIR's name>.wasm; a relative OUT is relative
// to where the command runs. The component's path is printed on stdout (componentize-js's own
// output goes to stderr). DIR's `.js`/`.mjs` files are copied to a scratch folder with this
// package's policy API, and `from "portcullis-policy"` becomes a relative import there:
// componentize-js reads modules from files and does not resolve package names.

import { componentize } from "@bytecodealliance/componentize-js";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const WIT = join(pkg, "wit");
const WORLD = "plugin";
const API = "portcullis-policy.js";

function usage(message) {
  if (message) console.error(`portcullis-policy: ${message}`);
  console.error("usage: portcullis-policy build [DIR] [-o OUT] [--entry policy.js]\n       portcullis-policy wit");
  process.exit(2);
}

function parse(argv) {
  const [command, ...rest] = argv;
  if (command === "wit") return { command };
  if (command !== "build") usage(command ? `unknown command '${command}'` : "");
  const args = { command, dir: ".", out: undefined, entry: "policy.js" };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === "-o" || a === "--out" || a === "--entry") {
      if (rest[i + 1] === undefined) usage(`${a} needs a value`);
      args[a === "--entry" ? "entry" : "out"] = rest[++i];
    } else if (a === "-h" || a === "--help") usage();
    else if (a.startsWith("-")) usage(`unknown option '${a}'`);
    else args.dir = a;
  }
  return args;
}

// Rewrites the imports of the package name to the staged copy of the API.
function relink(source) {
  return source.replace(/(\bfrom\s*|\bimport\s*\(?\s*)(["'])portcullis-policy\2/g, `$1$2./${API}$2`);
}

async function build({ dir, out, entry }) {
  const source = resolve(dir);
  if (!existsSync(join(source, entry))) usage(`${join(source, entry)} not found`);
  out = resolve(out ?? join(source, `${basename(source)}.wasm`));
  const stage = await mkdtemp(join(tmpdir(), "portcullis-policy-"));
  try {
    for (const name of (await readdir(source)).sort()) {
      if (/\.m?js$/.test(name) && name !== API) {
        await writeFile(join(stage, name), relink(await readFile(join(source, name), "utf8")));
      }
    }
    await copyFile(join(pkg, "portcullis.js"), join(stage, API));
    // Paths inside the component are relative to the scratch folder, whatever the caller's.
    const here = process.cwd();
    process.chdir(stage);
    let component;
    try {
      // No `http` and `fetch-event`: the component would import wasi:http, which the gateway
      // grants only by a sidecar's [grants] http.
      ({ component } = await componentize({
        sourcePath: join(stage, entry),
        witPath: WIT,
        worldName: WORLD,
        disableFeatures: ["http", "fetch-event"],
      }));
    } finally {
      process.chdir(here);
    }
    await mkdir(dirname(out), { recursive: true });
    const tmp = join(dirname(out), `.${basename(out)}.tmp`);
    await writeFile(tmp, component);
    await rename(tmp, out);
    return out;
  } finally {
    await rm(stage, { recursive: true, force: true });
  }
}

const args = parse(process.argv.slice(2));
if (args.command === "wit") {
  console.log(WIT);
} else {
  // componentize-js reports progress on stdout: keep stdout for the path alone.
  const print = console.log;
  console.log = (...a) => console.error(...a);
  try {
    print(await build(args));
  } catch (e) {
    console.error(`portcullis-policy build: ${e?.message ?? e}`);
    process.exit(1);
  }
}
