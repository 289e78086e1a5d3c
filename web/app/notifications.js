// Push notifications on this device (PROTOCOL.md section 10): subscribe with the
// relay's VAPID key, register the subscription (signed by the device key), ask every
// machine for pushes, choose the kinds; tell machines which session is in the
// foreground (they do not push about it); send the decisions the service worker
// signed when a notification's Approve or Deny was tapped.

import { idbDelete, idbEntries, idbGet, idbPut } from "./idb.js";

export const PUSH_TARGET = "p-web"; // this device's push target id on every machine
export const DECISION_PREFIX = "decision:"; // IndexedDB "state" keys the service worker writes (web/sw.js)
export const KINDS = [
  ["checkpoint", "A checkpoint waits"],
  ["reminder", "Reminder before a checkpoint expires"],
  ["session-succeeded", "A session succeeded"],
  ["session-failed", "A session failed"],
  ["session-lost", "A session was lost"],
];
const SETTINGS_STATE = "notify-settings"; // IndexedDB "state": what the machines accepted
const DEFAULTS = { kinds: KINDS.map(([kind]) => kind), reminder_fraction: 0.8, push: false };
const VIEWING_FOR_S = 60; // a viewing claim lasts this long; renewed while still true
const VIEWING_RENEW_MS = 30000;

const sameKey = (a, b) => a && b && a.byteLength === b.byteLength && new Uint8Array(a).every((x, i) => x === b[i]);

export async function enablePush(engine) {
  if (!("PushManager" in self) || !("Notification" in self)) {
    throw new Error("this browser cannot receive push notifications (on iOS: add the app to the home screen first)");
  }
  if ((await Notification.requestPermission()) !== "granted") {
    throw new Error("notifications are blocked for this site: allow them in the browser's site settings");
  }
  const registration = await navigator.serviceWorker.ready;
  // An empty registration removes any old one and answers with the relay's key.
  const vapid = await engine.registerPush({ endpoint: "", p256dh: new Uint8Array(0), auth: new Uint8Array(0) });
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription.options.applicationServerKey, vapid)) {
    await subscription.unsubscribe(); // made for another relay key: pushes would be refused
    subscription = null;
  }
  if (!subscription) subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: vapid });
  await engine.registerPush({
    endpoint: subscription.endpoint,
    p256dh: new Uint8Array(subscription.getKey("p256dh")),
    auth: new Uint8Array(subscription.getKey("auth")),
  });
  const results = await engine.commandAll("notify-target", { target: PUSH_TARGET, target_kind: "push", url: "", content: "full" });
  await remember({ push: true });
  return results;
}

// Off: the browser drops the subscription, the relay forgets it (an empty
// register-push), every machine removes this device's push target. Each step runs
// even when an earlier one failed: the relay forgetting alone already stops pushes.
export async function disablePush(engine) {
  const registration = await navigator.serviceWorker.ready;
  const subscription = await registration.pushManager.getSubscription();
  if (subscription) await subscription.unsubscribe();
  await engine.registerPush({ endpoint: "", p256dh: new Uint8Array(0), auth: new Uint8Array(0) });
  await remember({ push: false });
  return engine.commandAll("notify-target-remove", { target: PUSH_TARGET });
}

// The choices this device last saved (the kinds and the reminder's fraction are
// this device's own on every machine; only this device sets them), and whether
// pushes are on. Defaults until the first save.
export async function savedSettings() {
  return { ...DEFAULTS, ...((await idbGet("state", SETTINGS_STATE)) || {}) };
}

async function remember(fields) {
  await idbPut("state", SETTINGS_STATE, { ...(await savedSettings()), ...fields });
}

export async function saveSettings(engine, kinds, reminderFraction) {
  const results = await engine.commandAll("notify-settings", { kinds, reminder_fraction: reminderFraction });
  if (results.some((r) => r.ok)) await remember({ kinds, reminder_fraction: reminderFraction });
  return results;
}

// A queued decision stays in IndexedDB until its machine acks the command (a page
// closed before then leaves it for the next one), and goes out again under the same
// command id, which the daemon runs at most once. `sending`: keys this page already
// put in a machine's outbox (which itself resends after a reconnect).
const sending = new Set();

export async function sendQueuedDecisions(engine) {
  for (const [key, { machine, fields, command_id: id }] of await idbEntries("state", DECISION_PREFIX)) {
    if (sending.has(key)) continue;
    const acked = engine.submitSigned(machine, fields, id);
    if (acked === null) {
      await idbDelete("state", key); // a machine this device no longer has: never deliverable
      continue;
    }
    sending.add(key);
    acked.then(() => idbDelete("state", key)).finally(() => sending.delete(key));
  }
}

// While a session is on screen and the page visible, claim it (renewed); otherwise
// release the claim, so pushes resume at once.
export function trackViewing(store, engine) {
  let claimed = null; // { machine, session }
  const current = () => {
    const s = store.state;
    if (s.view !== "session" || !s.selected || document.visibilityState !== "visible" || s.connection.state !== "live") return null;
    return s.selected;
  };
  const sync = (renew) => {
    const now = current();
    const same = now && claimed && now.machine === claimed.machine && now.session === claimed.session;
    if (same && !renew) return;
    if (claimed && !same) engine.viewing(claimed.machine, "", Date.now() / 1000);
    if (now) engine.viewing(now.machine, now.session, Date.now() / 1000 + VIEWING_FOR_S);
    claimed = now;
  };
  store.subscribe(() => sync(false));
  document.addEventListener("visibilitychange", () => sync(false));
  setInterval(() => sync(true), VIEWING_RENEW_MS);
}
