// The join direction (a browser without a camera shows its own code; an owner runs
// `starmux devices add CODE`): join codes, and a whole join made by the Python core
// with fixed randomness (tests/data/web-golden.json "join") that the JS new device
// must answer byte for byte.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fromHex, toHex } from '../proto/bytes.js';
import { JoiningDevice } from '../proto/device_link.js';
import { Kind } from '../proto/e2e.js';
import { PairingCodeError, PairingFailed, UsageError } from '../proto/errors.js';
import { NodeKeys, Role } from '../proto/identity.js';
import { formatJoinCode, parseJoinCode, parseLinkCode } from '../proto/pairing_code.js';
import { GOLDEN } from './golden.mjs';

const J = GOLDEN.join;
const device = () => new NodeKeys(fromHex(J.device.signing_seed), fromHex(J.device.dh_private));
const rng = (n) => new Uint8Array(n).fill(Number.parseInt(J.device_rng, 16));
const joining = (code = parseJoinCode(J.code)) => {
  const keys = device();
  return new JoiningDevice(keys, keys.card(Role.CONTROLLER, 'browser'), code, { relayKey: fromHex(J.relay_key), rng });
};
const M = J.messages.map(fromHex);

test('join codes: the Python text parses to the same fields and formats back; each direction refuses the other', () => {
  const [text] = GOLDEN.codes.join;
  const f = GOLDEN.codes.join_fields;
  const code = parseJoinCode(` ${text}\n`);
  assert.equal(code.relayUrl, f.relay);
  assert.equal(code.relayFingerprint, f.rfp);
  assert.equal(code.deviceFingerprint, f.dfp);
  assert.equal(toHex(code.ticket), f.ticket);
  assert.equal(toHex(code.secret), f.secret);
  assert.equal(code.role, undefined);
  assert.equal(formatJoinCode(code), text);
  assert.throws(() => parseLinkCode(text), (e) => e instanceof PairingCodeError && e.message.includes('starmux devices add CODE'));
  assert.throws(() => parseJoinCode(GOLDEN.codes.link[0]), (e) => e instanceof PairingCodeError && e.message.includes('starmux link CODE'));
  assert.throws(() => parseJoinCode(`${text}&role=owner`), PairingCodeError);
  assert.throws(() => parseJoinCode(GOLDEN.codes.pair[0]), PairingCodeError);
});

test('a join against the Python owner: the JS new device sends the same bytes and ends linked', () => {
  const end = joining();
  assert.equal(end.phase, 'await-first');
  assert.equal(toHex(end.receive(M[0])), J.messages[1]);
  assert.equal(end.receive(M[2]), null);
  assert.equal(end.phase, 'confirming');
  assert.equal(end.comparisonCode, J.comparison_code);
  assert.equal(end.owner.name, J.owner_name);
  assert.equal(toHex(end.account), J.account);
  assert.equal(toHex(end.accept()), J.messages[3]);
  assert.equal(toHex(end.receive(M[4])), J.messages[5]);
  assert.equal(end.phase, 'linked');
  assert.equal(end.role, J.role);
  assert.equal(end.log.roleOf(device().signPublic), J.role);
  assert.deepEqual(end.machines.map((card) => card.name), ['box']);
});

test('a join fails closed: a welcome before confirming, a wrong secret, an abort, a code naming another device', () => {
  const early = joining();
  early.receive(M[0]);
  early.receive(M[2]);
  assert.throws(() => early.receive(M[4]), PairingFailed);
  assert.equal(early.phase, 'failed');

  const code = parseJoinCode(J.code);
  const wrong = joining({ ...code, secret: new Uint8Array(32).fill(1) });
  wrong.receive(M[0]);
  assert.throws(() => wrong.receive(M[2]), (e) => e instanceof PairingFailed && /wrong or stale code/.test(e.message));

  const aborted = joining();
  aborted.receive(M[0]);
  assert.throws(() => aborted.receive(Uint8Array.of(Kind.PAIR_ABORT)), (e) => e instanceof PairingFailed && e.aborted);
  assert.throws(() => aborted.receive(M[2]), PairingFailed);

  assert.throws(() => joining({ ...code, deviceFingerprint: GOLDEN.codes.join_fields.rfp }), UsageError);
  assert.throws(() => joining().accept(), UsageError);
});
