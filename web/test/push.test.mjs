// web/proto/push.js against tests/data/push-vector.json, a push sealed by the Python core.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { equal } from '../proto/bytes.js';
import { CryptoError } from '../proto/errors.js';
import { openPush, SEALED_SIZE } from '../proto/push.js';

const VECTOR = JSON.parse(readFileSync(new URL('../../tests/data/push-vector.json', import.meta.url), 'utf8'));
const b64 = (text) => new Uint8Array(Buffer.from(text, 'base64'));
const machine = b64(VECTOR.machine_sign_public);
const device = {
  dhPrivate: b64(VECTOR.device_dh_private),
  dhPublic: b64(VECTOR.device_dh_public),
  deviceKey: b64(VECTOR.device_sign_public),
  isPaired: (key) => equal(key, machine),
};
const sealed = b64(VECTOR.sealed);

test('the golden push opens to its note', async () => {
  assert.equal(sealed.length, SEALED_SIZE);
  const note = await openPush(sealed, device);
  const want = VECTOR.note;
  assert.ok(equal(note.machine, machine));
  assert.equal(note.notify_kind, want.kind);
  for (const field of ['at', 'machine_name', 'session', 'session_title', 'checkpoint', 'title', 'body', 'cwd', 'expires_at']) {
    assert.equal(note[field], want[field], field);
  }
});

test('a push from a machine this device did not pair is refused', async () => {
  await assert.rejects(openPush(sealed, { ...device, isPaired: () => false }), CryptoError);
});

test('any changed byte, a wrong size or another device key is refused', async () => {
  for (const at of [0, 31, 32, 100, SEALED_SIZE - 1]) {
    const changed = sealed.slice();
    changed[at] ^= 1;
    await assert.rejects(openPush(changed, device), CryptoError, `byte ${at}`);
  }
  await assert.rejects(openPush(sealed.subarray(1), device), CryptoError);
  await assert.rejects(openPush(new Uint8Array(SEALED_SIZE), device), CryptoError);
  const otherDevice = device.deviceKey.slice();
  otherDevice[0] ^= 1; // the signature covers the device key: a push for another device
  await assert.rejects(openPush(sealed, { ...device, deviceKey: otherDevice }), CryptoError);
});
