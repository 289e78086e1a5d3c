// Frames, padding, transcripts, fingerprints, cards and relay auth against the tables
// the Python core wrote (tests/data/web-golden.json).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fromHex, toHex, utf8 } from '../proto/bytes.js';
import { CryptoError, FrameError, RelayKeyMismatch } from '../proto/errors.js';
import { comparisonCode, fingerprint, fingerprintBytes, fingerprintFromText, normalizeFingerprint } from '../proto/fingerprint.js';
import { FrameType, encodeFrame, parseFrame } from '../proto/frames.js';
import { NodeKeys, Role, decodeCard } from '../proto/identity.js';
import { pad, paddedSize, unpad } from '../proto/padding.js';
import { NodeAuth, grantTranscript, revokeTranscript } from '../proto/relay_auth.js';
import { signedTime, transcript } from '../proto/transcript.js';
import { GOLDEN } from './golden.mjs';

const C = GOLDEN.crypto;
const keys = (name) => new NodeKeys(fromHex(C.keys[name].signing_seed), fromHex(C.keys[name].dh_private));

test('frame types and the golden frames', () => {
  assert.deepEqual({ ...FrameType }, GOLDEN.frames.types);
  for (const frame of GOLDEN.frames.good) {
    const wire = encodeFrame(frame.type, fromHex(frame.peer), fromHex(frame.body));
    assert.equal(toHex(wire), frame.wire);
    const parsed = parseFrame(fromHex(frame.wire));
    assert.equal(parsed.type, frame.type);
    assert.equal(toHex(parsed.peer), frame.peer);
    assert.equal(toHex(parsed.body), frame.body);
  }
  for (const bad of GOLDEN.frames.bad) assert.throws(() => parseFrame(fromHex(bad)), FrameError, bad.slice(0, 40));
});

test('padding sizes and round trips', () => {
  for (const { length, padded } of C.padding) {
    assert.equal(paddedSize(length), padded, `length ${length}`);
    const data = new Uint8Array(length).fill(7);
    assert.deepEqual(unpad(pad(data)), data);
  }
  const padded = pad(utf8('hi'));
  padded[200] = 1;
  assert.throws(() => unpad(padded), CryptoError);
});

test('transcripts and signed times', () => {
  for (const t of C.transcripts) assert.equal(toHex(transcript(t.domain, ...t.fields.map(fromHex))), t.out);
  for (const t of C.signed_times) assert.equal(toHex(signedTime(t.seconds)), t.out, String(t.seconds));
  assert.throws(() => signedTime(NaN), CryptoError);
  assert.throws(() => signedTime(Infinity), CryptoError);
  const account = fromHex(C.device_log.account);
  assert.equal(toHex(grantTranscript(account, fromHex(C.cards.machine), 1700000000.5)), C.grant);
  assert.equal(toHex(revokeTranscript(account, fromHex(C.keys.machine.sign_public), 1700000000.5)), C.revoke);
});

test('keys, fingerprints and comparison codes', () => {
  for (const name of Object.keys(C.keys)) {
    const k = keys(name);
    assert.equal(toHex(k.signPublic), C.keys[name].sign_public);
    assert.equal(toHex(k.dhPublic), C.keys[name].dh_public);
    assert.equal(k.fingerprint, C.keys[name].fingerprint);
    assert.equal(toHex(fingerprintBytes(k.signPublic)), C.keys[name].fingerprint_bytes);
    assert.equal(toHex(fingerprintFromText(k.fingerprint.toLowerCase().replaceAll('-', ' '))), C.keys[name].fingerprint_bytes);
  }
  for (const f of C.fingerprints) assert.equal(fingerprint(fromHex(f.key)), f.text);
  for (const c of C.comparison_codes) assert.equal(comparisonCode(fromHex(c.hash)), c.code);
  assert.throws(() => normalizeFingerprint('ſ'.repeat(32)));
});

test('identity cards: the same bytes, verified, and a flipped bit refused', () => {
  const made = { relay: keys('relay').card(Role.RELAY, 'relay'), machine: keys('machine').card(Role.MACHINE, 'büro-01'),
    owner: keys('owner').card(Role.CONTROLLER, 'laptop'), second: keys('second').card(Role.CONTROLLER, 'phone') };
  for (const [name, card] of Object.entries(made)) {
    assert.equal(toHex(card.encoded), C.cards[name]);
    assert.equal(decodeCard(fromHex(C.cards[name])).name, card.name);
  }
  const tampered = fromHex(C.cards.owner);
  tampered[tampered.length - 1] ^= 1;
  assert.throws(() => decodeCard(tampered), CryptoError);
  assert.throws(() => keys('owner').card(Role.CONTROLLER, 'bad\u0007name'));
});

test('relay auth: the node answers the golden challenge with the golden AUTH frame', () => {
  const ra = C.relay_auth;
  const owner = keys('owner');
  const auth = new NodeAuth(owner, owner.card(Role.CONTROLLER, 'laptop'), {
    pinnedRelayKey: keys('relay').signPublic,
    rng: (n) => new Uint8Array(n).fill(0x22),
  });
  assert.equal(toHex(auth.receiveChallenge(parseFrame(fromHex(ra.challenge)))), ra.auth);
  const result = auth.receiveWelcome(parseFrame(fromHex(ra.welcome)));
  assert.equal(result.status, 'controller');
  assert.equal(toHex(result.account), ra.account);
  assert.equal(result.relayTime, 1700000001.5);
});

test('relay auth refuses another relay key, and a welcome not signed for this exchange', () => {
  const ra = C.relay_auth;
  const owner = keys('owner');
  const card = owner.card(Role.CONTROLLER, 'laptop');
  const pinnedElsewhere = new NodeAuth(owner, card, { pinnedRelayKey: keys('second').signPublic });
  assert.throws(() => pinnedElsewhere.receiveChallenge(parseFrame(fromHex(ra.challenge))), RelayKeyMismatch);
  const otherNonce = new NodeAuth(owner, card, { pinnedRelayKey: null, rng: (n) => new Uint8Array(n).fill(0x23) });
  otherNonce.receiveChallenge(parseFrame(fromHex(ra.challenge)));
  assert.throws(() => otherNonce.receiveWelcome(parseFrame(fromHex(ra.welcome))), CryptoError);
  assert.throws(() => otherNonce.receiveWelcome(parseFrame(fromHex(ra.welcome))), CryptoError);
});

test('the channel: both directions, rekey in step, replay and reorder refused for good', async () => {
  const { HandshakeState } = await import('../proto/noise.js');
  const { SecureChannel } = await import('../proto/channel.js');
  const a = new HandshakeState('Noise_NN_25519_ChaChaPoly_BLAKE2b', { initiator: true });
  const b = new HandshakeState('Noise_NN_25519_ChaChaPoly_BLAKE2b', { initiator: false });
  a.readMessage(b.readMessage(a.writeMessage()) && b.writeMessage());
  const left = SecureChannel.fromHandshake(a, { rekeyEvery: 3, pad: true });
  const right = SecureChannel.fromHandshake(b, { rekeyEvery: 3, pad: true });
  for (let i = 0; i < 10; i++) {
    const message = utf8(`message ${i}`);
    assert.deepEqual(right.decrypt(left.encrypt(message)), message);
    assert.deepEqual(left.decrypt(right.encrypt(message)), message);
  }
  const first = left.encrypt(utf8('one'));
  const second = left.encrypt(utf8('two'));
  assert.throws(() => right.decrypt(second), CryptoError); // out of order
  assert.throws(() => right.decrypt(first), CryptoError); // failed for good
  assert.ok(right.closed);
});

test('checkpoint decisions sign the Python transcript', async () => {
  const { decideCheckpoint, decisionTranscript } = await import('../proto/decisions.js');
  const machineKey = fromHex(C.keys.machine.sign_public);
  assert.equal(toHex(decisionTranscript(machineKey, 'cp-1', false, 'not on friday', 1700000000.25)), C.decision.transcript);
  const fields = decideCheckpoint(keys('owner'), machineKey, { checkpoint: 'cp-1', approve: false, reason: 'not on friday', decidedAt: 1700000000.25 });
  assert.equal(toHex(fields.signature), C.decision.signature);
  const { APP } = await import('../proto/codec.js');
  assert.equal(APP.decode(APP.encode('decide-checkpoint', fields)).reason, 'not on friday');
});
