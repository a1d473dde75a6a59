// `path-guard`, in JavaScript: refuses a `tools/call` whose arguments name a filesystem path
// outside the allowed folders, and tags the calls it checked for later stages.
//
// The same policy as examples/policies/rust (the reference): same settings, same verdicts,
// same error, same attributes. A string argument (at any depth; object keys in sorted order)
// counts as a path when it starts with `/`, `~` or `file://`, or has a `..` component. Paths
// are resolved lexically and compared component by component with `allowed-prefixes`.
//
// Build, from the repository root (installs componentize-js on first use):
//   examples/policies/build js examples/policies/js/path-guard

import {
  ConfigError, DENIED, allow, args, checkKeys, definePolicy, deny, log, modify, withAttribute,
} from "portcullis-policy";

/** Set on every call path-guard checked and let through. */
export const CHECKED = "path-guard.checked";
/** How many path arguments the call had. */
export const PATHS = "path-guard.paths";

const SEPARATORS = /[/\\]/;

/** `{ root, parts }` with `.` and `..` resolved; `null` when `..` climbs above the root. */
export function normalize(path) {
  if (path.startsWith("file://")) path = path.slice("file://".length);
  let root, rest;
  if (path.startsWith("~")) [root, rest] = ["home", path.slice(1)];
  else if (path.startsWith("/") || path.startsWith("\\")) [root, rest] = ["absolute", path];
  else [root, rest] = ["relative", path];
  const parts = [];
  for (const part of rest.split(SEPARATORS)) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (parts.length === 0) return null;
      parts.pop();
    } else {
      parts.push(part);
    }
  }
  return { root, parts };
}

/** Starts with `/`, `~` or `file://`, or has a `..` component. */
export function looksLikePath(s) {
  return /^(\/|~|file:\/\/)/.test(s) || s.split(SEPARATORS).includes("..");
}

function isAllowed(path, allowed) {
  const p = normalize(path);
  if (p === null || p.root === "relative") return false;
  return allowed.some(
    (folder) => folder.root === p.root && folder.parts.every((part, i) => p.parts[i] === part),
  );
}

// Keys in code-point order, like the Rust and Python versions (JavaScript's default sort
// compares UTF-16 units).
const byCodePoint = (a, b) => {
  const [x, y] = [Array.from(a), Array.from(b)];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
};

/** Where the first path outside `allowed` is (e.g. `files[1].src`), depth first. */
export function firstOutside(value, allowed, at = "") {
  if (typeof value === "string") {
    return looksLikePath(value) && !isAllowed(value, allowed) ? at : null;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = firstOutside(value[i], allowed, `${at}[${i}]`);
      if (found !== null) return found;
    }
  } else if (value !== null && typeof value === "object") {
    for (const key of Object.keys(value).sort(byCodePoint)) {
      const found = firstOutside(value[key], allowed, at ? `${at}.${key}` : key);
      if (found !== null) return found;
    }
  }
  return null;
}

export function countPaths(value) {
  if (typeof value === "string") return looksLikePath(value) ? 1 : 0;
  if (value !== null && typeof value === "object") {
    return Object.values(value).reduce((n, v) => n + countPaths(v), 0);
  }
  return 0;
}

export const policy = definePolicy({
  describe: { name: "path-guard", version: "0.1.0", stage: "authz", phases: ["request"] },

  init(config) {
    checkKeys(config, "allowed-prefixes", "tag-identity");
    const prefixes = config["allowed-prefixes"] ?? [];
    const tagIdentity = config["tag-identity"] ?? false;
    if (!Array.isArray(prefixes) || !prefixes.every((p) => typeof p === "string")) {
      throw new ConfigError("allowed-prefixes: expected a list of strings");
    }
    if (typeof tagIdentity !== "boolean") {
      throw new ConfigError("tag-identity: expected true or false");
    }
    const allowed = prefixes.map((prefix) => {
      const folder = normalize(prefix);
      if (folder === null || folder.root === "relative") {
        throw new ConfigError(
          `allowed-prefixes: ${JSON.stringify(prefix)} must be an absolute path or start with \`~\``,
        );
      }
      return folder;
    });
    return { allowed, tagIdentity };
  },

  evaluate({ allowed, tagIdentity }, msg) {
    if (msg.method() !== "tools/call") return allow();
    const argv = args(msg);
    if (argv === undefined) return allow();
    const at = firstOutside(argv, allowed);
    if (at !== null) {
      log.info(`refused ${msg.target() ?? "?"}: argument ${at} is outside the allowed folders`);
      return deny(DENIED, `path-guard: argument \`${at}\` names a path outside the allowed folders`, {
        data: { argument: at },
      });
    }
    const identity = tagIdentity ? msg.identity() : undefined;
    return modify({
      attributes: { [CHECKED]: "true", [PATHS]: String(countPaths(argv)) },
      identity: identity && withAttribute(identity, CHECKED, "true"),
    });
  },
});
