// Pairing and link codes, the device log (against the Python-made log in
// tests/data/web-golden.json), and the pairing, link and live state machines end to end
// between two JS sides (the interop tests run them against the Python side).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { equal, fromHex, toHex } from '../proto/bytes.js';
import { Inviter, NewDevice } from '../proto/device_link.js';
import { DeviceLog, Op, decodeEntries, encodeEntries, entryHash } from '../proto/device_log.js';
import { Kind, unwrap } from '../proto/e2e.js';
import { CryptoError, DeviceLogError, PairingCodeError, PairingFailed } from '../proto/errors.js';
import { NodeKeys, Role } from '../proto/identity.js';
import { finish, initiate, respond } from '../proto/live_channel.js';
import { ControllerPairing, MachinePairing } from '../proto/pairing.js';
import { formatLinkCode, formatPairingCode, parseJoinCode, parseLinkCode, parsePairingCode } from '../proto/pairing_code.js';
import { GOLDEN } from './golden.mjs';

const C = GOLDEN.crypto;
const keys = (name) => new NodeKeys(fromHex(C.keys[name].signing_seed), fromHex(C.keys[name].dh_private));
const RELAY = fromHex(C.keys.relay.sign_public);
const bytesOf = (n, size) => new Uint8Array(size).fill(n);

test('pairing and link codes: the Python texts parse to the same fields and format back', () => {
  const [plain, withExpiry] = GOLDEN.codes.pair;
  const code = parsePairingCode(`  ${plain}\n`);
  const f = GOLDEN.codes.pair_fields;
  assert.equal(code.relayUrl, f.relay);
  assert.equal(code.relayFingerprint, f.rfp);
  assert.equal(code.machineFingerprint, f.mfp);
  assert.equal(toHex(code.ticket), f.ticket);
  assert.equal(toHex(code.secret), f.secret);
  assert.equal(formatPairingCode(code), plain);
  assert.equal(formatPairingCode(parsePairingCode(withExpiry)), withExpiry);
  assert.equal(parsePairingCode(withExpiry).expiresAt, 1700000000);
  const link = parseLinkCode(GOLDEN.codes.link[0]);
  assert.equal(link.role, GOLDEN.codes.link_fields.role);
  assert.equal(toHex(link.secret), GOLDEN.codes.link_fields.secret);
  assert.equal(formatLinkCode(link), GOLDEN.codes.link[0]);
  for (const bad of [
    '', 'hello', 'starmux://pair/v2?x=1', plain.replace('ticket=', 'tikket='), plain + '&rfp=AAAA',
    plain.split('&secret=')[0], plain.replace('ws://', 'http://'), `${plain}&exp=12x`,
    plain.replace(/secret=[^&]+/, 'secret=AAAA'), plain.replace(/mfp=[^&]+/, 'mfp=NOTAFINGERPRINT'),
  ]) {
    assert.throws(() => parsePairingCode(bad), PairingCodeError, bad);
  }
  assert.throws(() => parseLinkCode(plain), PairingCodeError);
  assert.throws(() => parseLinkCode(GOLDEN.codes.link[0].replace('role=operator', 'role=admin')), PairingCodeError);
});

test('the device log: the Python-made chain verifies, hashes match, and JS appends the same bytes', () => {
  const d = C.device_log;
  const entries = decodeEntries(fromHex(d.entries));
  const log = DeviceLog.verify(entries, { account: fromHex(d.account) });
  assert.deepEqual(entries.map((e) => toHex(entryHash(e))), d.hashes);
  assert.equal(toHex(log.encode()), d.entries);
  assert.equal(log.devices.length, 1);
  assert.ok(log.isRemoved(keys('second').signPublic));
  // Rebuilding with JS signs the same bytes (Ed25519 is deterministic).
  const owner = keys('owner');
  const second = keys('second');
  let mine = DeviceLog.genesis(owner, owner.card(Role.CONTROLLER, 'laptop'), fromHex(d.account), { at: 1700000000.0 });
  [mine] = mine.append(owner, Op.ADD, second.signPublic, { card: second.card(Role.CONTROLLER, 'phone'), role: 'operator', at: 1700000100.5 });
  [mine] = mine.append(owner, Op.SET_ROLE, second.signPublic, { role: 'viewer', at: 1700000200.0 });
  [mine] = mine.append(owner, Op.REMOVE, second.signPublic, { at: 1700000300.0 });
  assert.equal(toHex(mine.encode()), d.entries);
  // Continuing from a prefix, and the refusals.
  const prefix = DeviceLog.verify(decodeEntries(fromHex(d.prefixes[1])));
  assert.equal(prefix.update(entries).head.seq, 3);
  assert.throws(() => log.update(entries.slice(0, 2)), (e) => e instanceof DeviceLogError && e.kind === 'stale');
  assert.throws(() => DeviceLog.verify(entries.slice(1)), (e) => e instanceof DeviceLogError && e.kind === 'gap');
  assert.throws(() => DeviceLog.verify([entries[0], entries[2]]), (e) => e instanceof DeviceLogError && e.kind === 'gap');
  assert.throws(() => mine.append(second, Op.ADD, keys('machine').signPublic, { card: keys('machine').card(Role.CONTROLLER, 'x'), role: 'viewer', at: 1 }),
    (e) => e instanceof DeviceLogError && e.kind === 'authority');
  assert.throws(() => mine.append(owner, Op.REMOVE, owner.signPublic, { at: 1 }), (e) => e instanceof DeviceLogError && e.kind === 'last-owner');
  const forged = { ...entries[1], at: entries[1].at + 1 };
  assert.throws(() => DeviceLog.verify([entries[0], forged]), (e) => e instanceof DeviceLogError && e.kind === 'signature');
  const other = DeviceLog.genesis(owner, owner.card(Role.CONTROLLER, 'laptop'), bytesOf(9, 16), { at: 5 });
  assert.throws(() => log.update(other.entries), (e) => e instanceof DeviceLogError && e.kind === 'fork');
  assert.throws(() => decodeEntries(fromHex(d.entries).slice(0, -1)), DeviceLogError);
  assert.equal(encodeEntries(entries).length, fromHex(d.entries).length);
});

function pairBoth({ secret = bytesOf(2, 32) } = {}) {
  const controller = keys('owner');
  const machine = keys('machine');
  const ticket = bytesOf(1, 16);
  const account = bytesOf(0x44, 16);
  const code = parsePairingCode(formatPairingCode({ relayUrl: 'ws://127.0.0.1:1', relayFingerprint: C.keys.relay.fingerprint,
    ticket, machineFingerprint: machine.fingerprint, secret: bytesOf(2, 32) }));
  const c = new ControllerPairing(controller, controller.card(Role.CONTROLLER, 'laptop'), code, { relayKey: RELAY, account });
  const m = new MachinePairing(machine, machine.card(Role.MACHINE, 'box'), { relayKey: RELAY, ticket, secret, privateName: 'real-name' });
  return { c, m, controller, machine, account };
}

test('pairing between two JS sides: codes agree, the grant verifies, both end paired', () => {
  const { c, m, controller, machine } = pairBoth();
  const m2 = m.receive(c.start(machine.signPublic));
  const c3 = c.receive(m2);
  assert.equal(c.machineCard.name, 'box');
  const accepted = m.receive(c3);
  assert.equal(c.receive(accepted), null);
  assert.equal(c.machineName, 'real-name');
  assert.equal(c.comparisonCode, m.comparisonCode);
  const [, granted] = c.grant(controller, { issuedAt: 1700000000.5 });
  c.receive(m.receive(granted));
  assert.equal(c.phase, 'paired');
  assert.equal(m.phase, 'paired');
});

test('pairing with a wrong secret fails on the machine, and the abort is final on the controller', () => {
  const { c, m, machine } = pairBoth({ secret: bytesOf(3, 32) });
  const c3 = c.receive(m.receive(c.start(machine.signPublic)));
  assert.throws(() => m.receive(c3), PairingFailed);
  assert.throws(() => c.receive(Uint8Array.of(Kind.PAIR_ABORT)), (e) => e instanceof PairingFailed && e.aborted);
  assert.throws(() => c.receive(Uint8Array.of(Kind.PAIR_ABORT)), PairingFailed);
});

test('linking between two JS sides, and the live channel after it', () => {
  const owner = keys('owner');
  const device = keys('second');
  const account = bytesOf(0x44, 16);
  const ownerCard = owner.card(Role.CONTROLLER, 'laptop');
  const deviceCard = device.card(Role.CONTROLLER, 'phone');
  const ticket = bytesOf(5, 16);
  const secret = bytesOf(6, 32);
  const code = parseLinkCode(formatLinkCode({ relayUrl: 'wss://r.example', relayFingerprint: C.keys.relay.fingerprint,
    ticket, inviterFingerprint: owner.fingerprint, secret, role: 'operator' }));
  const inviter = new Inviter(owner, ownerCard, { account, relayKey: RELAY, ticket, secret });
  const joining = new NewDevice(device, deviceCard, code, { relayKey: RELAY });
  const final = joining.receive(inviter.receive(joining.start()));
  assert.equal(inviter.receive(final), null);
  assert.equal(inviter.comparisonCode, joining.comparisonCode);
  assert.equal(inviter.device.name, 'phone');
  let log = DeviceLog.genesis(owner, ownerCard, account, { at: 1 });
  [log] = log.append(owner, Op.ADD, device.signPublic, { card: inviter.device, role: 'operator', at: 2 });
  const machine = keys('machine');
  const machineCard = machine.card(Role.MACHINE, 'box');
  const stored = joining.receive(inviter.welcome(log, [machineCard.encoded]));
  inviter.receive(stored);
  assert.equal(inviter.phase, 'linked');
  assert.equal(joining.log.roleOf(device.signPublic), 'operator');
  assert.equal(joining.machines[0].name, 'box');

  // KK: the new device to the machine, both directions, and a tampered message.
  const [hs, first] = initiate(device, joining.machines[0], { relayKey: RELAY });
  const [, firstPayload] = unwrap(first);
  const [machineSide, reply] = respond(machine, deviceCard, firstPayload, { relayKey: RELAY });
  const controllerSide = finish(hs, unwrap(reply)[1]);
  const request = controllerSide.seal('sync-request', { epoch: '', after_seq: 0, limit: 1000 });
  assert.equal(request.length, 1 + 256 + 16); // padded to the smallest bucket
  assert.deepEqual(machineSide.open(unwrap(request)[1]), { kind: 'sync-request', epoch: '', after_seq: 0, limit: 1000 });
  const page = machineSide.seal('event-page', { epoch: 'e1', events: [], more: false, live: false });
  assert.equal(controllerSide.open(unwrap(page)[1]).epoch, 'e1');
  const tampered = controllerSide.seal('sync-request', { epoch: 'e1', after_seq: 0, limit: 1 });
  tampered[10] ^= 1;
  assert.throws(() => machineSide.open(unwrap(tampered)[1]), CryptoError);
  assert.throws(() => machineSide.open(unwrap(controllerSide.seal('sync-request', { epoch: '', after_seq: 0, limit: 1 }))[1]), CryptoError);
  assert.ok(equal(hs.remoteStatic, machineCard.dhPublic));
});

test('a link code for another inviter is refused before anything is sent back', () => {
  const owner = keys('owner');
  const device = keys('second');
  const ticket = bytesOf(5, 16);
  const secret = bytesOf(6, 32);
  const code = parseLinkCode(formatLinkCode({ relayUrl: 'ws://r:1', relayFingerprint: C.keys.relay.fingerprint,
    ticket, inviterFingerprint: keys('machine').fingerprint, secret, role: 'viewer' }));
  const inviter = new Inviter(owner, owner.card(Role.CONTROLLER, 'laptop'), { account: bytesOf(1, 16), relayKey: RELAY, ticket, secret });
  const joining = new NewDevice(device, device.card(Role.CONTROLLER, 'phone'), code, { relayKey: RELAY });
  // The prologue names another inviter's fingerprint: the handshake itself fails.
  assert.throws(() => joining.receive(inviter.receive(joining.start())), PairingFailed);
});

test('every pasted code the Python parsers take or refuse, JS takes or refuses alike', () => {
  const disagreements = [];
  for (const verdict of GOLDEN.codes.verdicts) {
    for (const [name, parse] of [['pair', parsePairingCode], ['link', parseLinkCode], ['join', parseJoinCode]]) {
      let ok = true;
      try {
        parse(verdict.text);
      } catch (error) {
        if (!(error instanceof PairingCodeError)) throw error;
        ok = false;
      }
      if (ok !== verdict[name]) disagreements.push(`${name}: python ${verdict[name]} js ${ok}: ${verdict.text}`);
    }
  }
  assert.deepEqual(disagreements, []);
  assert.ok(GOLDEN.codes.verdicts.length > 60);
});
