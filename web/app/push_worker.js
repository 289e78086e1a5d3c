// The service worker's side of Web Push (imported by web/sw.js): open a push, show it,
// and turn a notification's Approve or Deny into a signed decision.
//
// - Opening needs the device's X25519 key, which sits wrapped in IndexedDB under a
//   non-extractable WebCrypto key (app/keystore.js). The worker unwraps it only while
//   the code pin is intact (the same rule as the page): with the code locked, no keys,
//   a push that does not open to a note signed by a paired machine, the notification
//   is a fixed generic notice. Nothing the relay controls is ever shown.
// - An action signs the decision here, with the device key, the moment it is tapped,
//   and queues it in IndexedDB ("decision:" keys, app/notifications.js) with the
//   command id it goes under; an open app is told to send it through its machine
//   channel, or the app is opened and sends it at start. It leaves the queue only
//   when the machine acks that command. The worker keeps no relay connection or
//   Noise channel of its own: that would duplicate the page's whole connection and
//   sync code for one message.
//
// Which platforms show the actions: Chrome, Edge and Opera on Windows, macOS, Linux,
// ChromeOS and Android. Firefox and Safari (macOS, iOS home-screen apps) show no
// notification actions: there a tap opens the approvals in the app.

import { toHex, fromHex } from "../proto/bytes.js";
import { decisionTranscript } from "../proto/decisions.js";
import { openPush, SEALED_SIZE, webCryptoSigner } from "../proto/push.js";
import { idbGet, idbPut } from "./idb.js";
import { unlockKeys } from "./keystore.js";
import { DECISION_PREFIX } from "./notifications.js";

const GENERIC_TITLE = "starmux: something needs you";
const GENERIC_TAG = "starmux-generic";
const MACHINES_STATE = "machines"; // engine.js: hex machine key -> { card, name }
const BASE64_SIZE = Math.ceil(SEALED_SIZE / 3) * 4;
const DECIDE = { approve: true, deny: false };

// The push's bytes. A real push carries the sealed box as it is; Chromium's DevTools
// protocol (ServiceWorker.deliverPushMessage, the browser tests) can only deliver text,
// so the same bytes in base64 are accepted too. Either way they must open and verify.
function sealedBytes(data) {
  if (!data) return null;
  const raw = new Uint8Array(data.arrayBuffer());
  if (raw.length === SEALED_SIZE) return raw;
  if (raw.length !== BASE64_SIZE) return null;
  try {
    return Uint8Array.from(atob(data.text()), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

async function publicOf(algorithm, pkcs8Prefix, secret) {
  const key = await crypto.subtle.importKey("pkcs8", new Uint8Array([...pkcs8Prefix, ...secret]), { name: algorithm }, true, algorithm === "X25519" ? ["deriveBits"] : ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", key);
  return Uint8Array.from(atob(jwk.x.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
}

const X25519_PKCS8 = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20];
const ED25519_PKCS8 = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

// The device's keys, or null when there are none or the code is locked.
async function deviceKeys(codeLocked) {
  if (await codeLocked()) return null;
  const secrets = await unlockKeys({ locked: false });
  if (!secrets) return null;
  const seed = secrets.slice(0, 32);
  const dhPrivate = secrets.slice(32, 64);
  return {
    seed,
    dhPrivate,
    deviceKey: await publicOf("Ed25519", ED25519_PKCS8, seed),
    dhPublic: await publicOf("X25519", X25519_PKCS8, dhPrivate),
  };
}

function shown(note) {
  const where = note.machine_name;
  const session = note.session_title || note.session;
  const asks = note.notify_kind === "checkpoint" || note.notify_kind === "reminder";
  const titles = {
    checkpoint: `${where}: ${note.title}`,
    reminder: `Still waiting · ${where}: ${note.title}`,
    "session-succeeded": `${where}: session succeeded`,
    "session-failed": `${where}: session failed`,
    "session-lost": `${where}: session lost`,
    test: `${where}: test notification`,
  };
  const body = asks ? [session, note.body].filter(Boolean).join("\n") : session;
  const machine = toHex(note.machine);
  return {
    title: titles[note.notify_kind] || `${where}: ${note.title}`,
    options: {
      body,
      tag: `${machine}/${note.checkpoint || note.session}`,
      requireInteraction: asks,
      data: { machine, session: note.session, checkpoint: asks ? note.checkpoint : "", kind: note.notify_kind },
      actions: asks ? [{ action: "approve", title: "Approve" }, { action: "deny", title: "Deny" }] : [],
    },
  };
}

async function onPush(data, codeLocked) {
  let note = null;
  try {
    const sealed = sealedBytes(data);
    const keys = sealed && (await deviceKeys(codeLocked));
    if (keys) {
      const paired = new Set(Object.keys((await idbGet("state", MACHINES_STATE)) || {}));
      note = await openPush(sealed, { ...keys, isPaired: (key) => paired.has(toHex(key)) });
    }
  } catch {
    note = null; // whatever went wrong, the generic notice: it says nothing the relay chose
  }
  if (!note) {
    await self.registration.showNotification(GENERIC_TITLE, { tag: GENERIC_TAG, data: { kind: "generic" } });
    return;
  }
  const { title, options } = shown(note);
  await self.registration.showNotification(title, options);
}

async function queueDecision(data, approve, codeLocked) {
  const keys = await deviceKeys(codeLocked);
  if (!keys) return false;
  const decidedAt = Date.now() / 1000;
  const machine = fromHex(data.machine);
  const signer = await webCryptoSigner(keys.seed);
  const signature = await signer.sign(decisionTranscript(machine, data.checkpoint, approve, "", decidedAt));
  const fields = { checkpoint: data.checkpoint, approve, reason: "", decided_at: decidedAt, signature };
  const commandId = `w-${toHex(crypto.getRandomValues(new Uint8Array(8)))}`; // kept for every resend
  await idbPut("state", `${DECISION_PREFIX}${data.machine}/${data.checkpoint}`, { machine: data.machine, fields, command_id: commandId });
  return true;
}

async function onClick(data, action, codeLocked) {
  const windows = await self.clients.matchAll({ type: "window" });
  if (action in DECIDE && data.checkpoint && (await queueDecision(data, DECIDE[action], codeLocked))) {
    if (windows.length) {
      for (const client of windows) client.postMessage({ type: "decisions" });
      return;
    }
    await self.clients.openWindow(new URL("./#approvals", self.registration.scope).href);
    return;
  }
  if (windows.length) {
    windows[0].postMessage({ type: "show-approvals" });
    await windows[0].focus();
  } else {
    await self.clients.openWindow(new URL("./#approvals", self.registration.scope).href);
  }
}

// waitUntil keeps the worker alive for the work; an event a test dispatches itself
// (no notification UI in headless Chromium) is not trusted and cannot extend, so
// the work runs anyway and only its keep-alive is skipped.
function keepAlive(event, work) {
  try {
    event.waitUntil(work);
  } catch {
    work.catch(() => {});
  }
}

export function installPushHandlers({ codeLocked }) {
  self.addEventListener("push", (event) => keepAlive(event, onPush(event.data, codeLocked)));
  self.addEventListener("notificationclick", (event) => {
    event.notification.close();
    keepAlive(event, onClick(event.notification.data || {}, event.action, codeLocked));
  });
}
