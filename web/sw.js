// The starmux web controller's service worker: the offline shell and the code pin.
//
// The page's code comes from whoever serves it, so this worker names that code by a
// hash and pins the first version it ran (DESIGN.md section 10):
//
// - It downloads the server's bundle.json and every file listed there, checks each
//   file's SHA-256, computes the bundle hash exactly as starmux/web_bundle.py does
//   (the value `starmux web --print-hash` prints) and keeps the files in a cache
//   named by that hash.
// - It always serves the *pinned* version from that cache (offline too).
// - When the server later offers different code, the new files are fetched and
//   checked but not run: the page is told "locked", and the keys stay locked until
//   the person confirms the new hash (message "trust"), which moves the pin.
//
// What it cannot do: a browser replaces this worker itself when the server sends a
// different sw.js. An honest new worker still finds the old pin in IndexedDB and
// locks the keys; a hostile one could skip that. The pin narrows the trust in the
// server to "the worker it sends", it does not remove it.
//
// It also shows Web Push notifications (web/app/push_worker.js): a module worker, for
// the protocol modules it imports (registered with type "module" by app/codepin.js).

import { installPushHandlers } from "./app/push_worker.js";

const DB_NAME = "starmux";
const DB_VERSION = 1;
const STORES = ["meta", "keys", "state"];
const CODE_KEY = "code";
const CACHE_PREFIX = "starmux-code-";
const DOMAIN = "starmux/web-bundle/v1";
const MAX_FILES = 512;
const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SCOPE = new URL("./", self.location.href);

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => {
      for (const name of STORES) {
        if (!request.result.objectStoreNames.contains(name)) request.result.createObjectStore(name);
      }
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function metaGet(key) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const request = db.transaction("meta").objectStore("meta").get(key);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  } finally {
    db.close();
  }
}

async function metaPut(key, value) {
  const db = await openDb();
  try {
    await new Promise((resolve, reject) => {
      const tx = db.transaction("meta", "readwrite");
      tx.objectStore("meta").put(value, key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function groupedBase32(bytes) {
  let bits = 0;
  let value = 0;
  let text = "";
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      text += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) text += BASE32[(value << (5 - bits)) & 31];
  return text.match(/.{1,4}/g).join("-");
}

function checkManifest(manifest) {
  const files = manifest && manifest.files;
  if (manifest.version !== 1 || typeof files !== "object" || files === null) {
    throw new Error("bundle.json is not a version 1 manifest");
  }
  const paths = Object.keys(files);
  if (paths.length === 0 || paths.length > MAX_FILES) throw new Error("bundle.json lists no files or too many");
  for (const path of paths) {
    const parts = path.split("/");
    if (!/^[\x21-\x7e]{1,255}$/.test(path) || parts.some((p) => p === "" || p === "." || p === "..") || path.includes("\\")) {
      throw new Error("bundle.json names a bad path");
    }
    if (!/^[0-9a-f]{64}$/.test(files[path])) throw new Error("bundle.json has a bad hash");
  }
  return paths.sort();
}

// The same bytes as starmux/web_bundle.py: DOMAIN, then per sorted path
// u16 length || path || raw sha256; the shown hash is 20 bytes in base32 groups.
async function bundleHash(files, paths) {
  const encoder = new TextEncoder();
  const chunks = [encoder.encode(DOMAIN)];
  for (const path of paths) {
    const raw = encoder.encode(path);
    chunks.push(new Uint8Array([raw.length >> 8, raw.length & 255]), raw, fromHex(files[path]));
  }
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const all = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return groupedBase32(digest.slice(0, 20));
}

// Fetch the server's current code, check it, keep it in a cache named by its hash.
async function download() {
  const response = await fetch(new URL("bundle.json", SCOPE), { cache: "no-store" });
  if (!response.ok) throw new Error(`bundle.json: HTTP ${response.status}`);
  const manifest = await response.json();
  const paths = checkManifest(manifest);
  const hash = await bundleHash(manifest.files, paths);
  if (hash !== manifest.hash) throw new Error("bundle.json's hash does not match its files");
  const cacheName = CACHE_PREFIX + hash;
  if (await caches.has(cacheName)) {
    const cache = await caches.open(cacheName);
    if ((await cache.keys()).length === paths.length) return hash;
  }
  const files = await Promise.all(
    paths.map(async (path) => {
      const got = await fetch(new URL(path, SCOPE), { cache: "no-store" });
      if (!got.ok) throw new Error(`${path}: HTTP ${got.status}`);
      const body = await got.arrayBuffer();
      if (hex(await crypto.subtle.digest("SHA-256", body)) !== manifest.files[path]) {
        throw new Error(`${path} does not match bundle.json (changed while downloading?)`);
      }
      // The server's headers (its CSP above all) go with the file into the cache.
      return [path, new Response(body, { status: 200, headers: got.headers })];
    }),
  );
  const cache = await caches.open(cacheName);
  await Promise.all(files.map(([path, resp]) => cache.put(new URL(path, SCOPE), resp)));
  return hash;
}

let refreshing = null;

// Compare the server's code with the pin: the first version ever seen becomes the
// pin; a different one becomes "offered" and locks the keys.
function refresh() {
  if (refreshing === null) {
    refreshing = (async () => {
      const code = (await metaGet(CODE_KEY)) || { pinned: null, offered: null };
      let checked = false;
      let error = null;
      try {
        const hash = await download();
        checked = true;
        if (!code.pinned) code.pinned = hash;
        code.offered = hash === code.pinned ? null : hash;
        code.checkedAt = Date.now();
        await metaPut(CODE_KEY, code);
        await dropOtherCaches(code);
      } catch (exc) {
        error = String(exc && exc.message ? exc.message : exc);
      }
      return { ...code, checked, error };
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

async function dropOtherCaches(code) {
  const keep = new Set([code.pinned, code.offered].filter(Boolean).map((h) => CACHE_PREFIX + h));
  for (const name of await caches.keys()) {
    if (name.startsWith(CACHE_PREFIX) && !keep.has(name)) await caches.delete(name);
  }
}

async function status() {
  const code = await refresh();
  return {
    pinned: code.pinned || null,
    offered: code.offered || null,
    running: code.pinned || null,
    locked: !code.pinned || Boolean(code.offered),
    checked: code.checked,
    error: code.error,
  };
}

async function trust(hash) {
  const code = (await metaGet(CODE_KEY)) || {};
  if (!hash || hash !== code.offered) return { ok: false, error: "that is not the code on offer" };
  code.pinned = hash;
  code.offered = null;
  await metaPut(CODE_KEY, code);
  await dropOtherCaches(code);
  return { ok: true };
}

self.addEventListener("install", (event) => {
  event.waitUntil(refresh().then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

async function fromPin(request) {
  const url = new URL(request.url);
  let path = url.pathname.slice(SCOPE.pathname.length);
  if (path === "" || request.mode === "navigate") path = path.endsWith(".html") ? path : "index.html";
  const code = await metaGet(CODE_KEY);
  if (code && code.pinned) {
    const cache = await caches.open(CACHE_PREFIX + code.pinned);
    const hit = await cache.match(new URL(path, SCOPE));
    if (hit) return hit;
  }
  return fetch(request);
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== SCOPE.origin || !url.pathname.startsWith(SCOPE.pathname)) {
    return; // the relay's WebSocket and anything else: not ours
  }
  if (url.pathname === SCOPE.pathname + "bundle.json") return;
  event.respondWith(fromPin(event.request));
});

self.addEventListener("message", (event) => {
  const port = event.ports[0];
  if (!port || !event.data || typeof event.data.type !== "string") return;
  const answer = event.data.type === "status" ? status() : event.data.type === "trust" ? trust(event.data.hash) : null;
  if (answer === null) return;
  event.waitUntil(
    answer.then(
      (value) => port.postMessage(value),
      (exc) => port.postMessage({ error: String(exc) }),
    ),
  );
});

installPushHandlers({ codeLocked: async () => {
  const code = await metaGet(CODE_KEY);
  return !code || !code.pinned || Boolean(code.offered);
} });
