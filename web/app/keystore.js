// This device's secret keys, at rest in IndexedDB, wrapped by a WebCrypto key.
//
// The wrapping key is AES-256-GCM made with extractable=false: the browser keeps
// its bytes and hands this page only a handle, so the IndexedDB files alone (a
// copied profile, a backup) do not reveal the device keys. unlock() refuses while
// the service worker reports the code as locked (the server sent code the person
// has not confirmed): keys open only under the pinned code.

import { idbGet, idbPut } from "./idb.js";

const WRAP = "wrap";
const SECRETS = "device-secrets";
const AAD = new TextEncoder().encode("starmux/web-keys/v1");

export class KeysLocked extends Error {}

async function wrappingKey() {
  let key = await idbGet("keys", WRAP);
  if (!key) {
    key = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
    await idbPut("keys", WRAP, key);
  }
  return key;
}

export async function hasKeys() {
  return Boolean(await idbGet("keys", SECRETS));
}

// Keep `secrets` (bytes) wrapped; `info` (public: names, fingerprints) beside them.
export async function storeKeys(secrets, info, code) {
  if (code.locked) throw new KeysLocked("the app's code is not confirmed: keys stay locked");
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const sealed = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: AAD }, await wrappingKey(), secrets);
  await idbPut("keys", SECRETS, { iv, sealed: new Uint8Array(sealed), info });
}

export async function keyInfo() {
  const record = await idbGet("keys", SECRETS);
  return record ? record.info : null;
}

export async function unlockKeys(code) {
  if (code.locked) throw new KeysLocked("the app's code changed: keys stay locked until you confirm the new hash");
  const record = await idbGet("keys", SECRETS);
  if (!record) return null;
  const key = await idbGet("keys", WRAP);
  const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: record.iv, additionalData: AAD }, key, record.sealed);
  return new Uint8Array(plain);
}
