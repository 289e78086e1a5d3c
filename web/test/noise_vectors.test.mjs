// The published cacophony vectors for *_25519_ChaChaPoly_BLAKE2b: the same file
// (tests/data/noise-25519-chachapoly-blake2b.json) tests/unit/test_noise_vectors.py reads.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { fromHex, toHex } from '../proto/bytes.js';
import { CryptoError, UsageError } from '../proto/errors.js';
import { HandshakeState, KeyPair } from '../proto/noise.js';
import { isOneWay, parseProtocolName } from '../proto/noise_patterns.js';

const FILE = new URL('../../tests/data/noise-25519-chachapoly-blake2b.json', import.meta.url);
const VECTORS = JSON.parse(readFileSync(FILE, 'utf8')).vectors;

function side(vector, prefix) {
  const key = (field) => (field in vector ? KeyPair.fromPrivate(fromHex(vector[field])) : null);
  const rs = vector[`${prefix}_remote_static`];
  return new HandshakeState(vector.protocol_name, {
    initiator: prefix === 'init',
    prologue: fromHex(vector[`${prefix}_prologue`]),
    s: key(`${prefix}_static`),
    e: key(`${prefix}_ephemeral`),
    rs: rs === undefined ? null : fromHex(rs),
    psks: (vector[`${prefix}_psks`] ?? []).map(fromHex),
  });
}

test('every vector is collected', () => {
  assert.equal(VECTORS.length, 59);
  assert.equal(new Set(VECTORS.map((v) => v.protocol_name)).size, 59);
});

for (const vector of VECTORS) {
  test(`vector ${vector.protocol_name}`, () => {
    const initiator = side(vector, 'init');
    const responder = side(vector, 'resp');
    const pattern = parseProtocolName(vector.protocol_name);
    const handshakeLength = pattern.messages.length;
    const messages = vector.messages;
    assert.ok(messages.length > handshakeLength);
    messages.slice(0, handshakeLength).forEach((message, index) => {
      const [sender, receiver] = index % 2 === 0 ? [initiator, responder] : [responder, initiator];
      assert.ok(sender.isMyTurn && !receiver.isMyTurn);
      const ciphertext = sender.writeMessage(fromHex(message.payload));
      assert.equal(toHex(ciphertext), message.ciphertext);
      assert.equal(toHex(receiver.readMessage(ciphertext)), message.payload);
    });
    assert.ok(initiator.isComplete && responder.isComplete);
    assert.equal(toHex(initiator.handshakeHash), vector.handshake_hash);
    assert.equal(toHex(responder.handshakeHash), vector.handshake_hash);
    const [initSend, initRecv] = initiator.split();
    const [respSend, respRecv] = responder.split();
    messages.slice(handshakeLength).forEach((message, offset) => {
      const fromInitiator = isOneWay(pattern) || (handshakeLength + offset) % 2 === 0;
      const [send, recv] = fromInitiator ? [initSend, respRecv] : [respSend, initRecv];
      const ciphertext = send.encryptWithAd(new Uint8Array(0), fromHex(message.payload));
      assert.equal(toHex(ciphertext), message.ciphertext);
      assert.equal(toHex(recv.decryptWithAd(new Uint8Array(0), ciphertext)), message.payload);
    });
  });
}

test('a flipped byte fails the handshake for good', () => {
  const a = new HandshakeState('Noise_NN_25519_ChaChaPoly_BLAKE2b', { initiator: true });
  const b = new HandshakeState('Noise_NN_25519_ChaChaPoly_BLAKE2b', { initiator: false });
  b.readMessage(a.writeMessage());
  const reply = b.writeMessage(new Uint8Array([1, 2, 3]));
  reply[reply.length - 1] ^= 1;
  assert.throws(() => a.readMessage(reply), CryptoError);
  assert.throws(() => a.handshakeHash, CryptoError);
  assert.throws(() => a.split(), CryptoError);
});

test('out of turn is a usage error that changes nothing', () => {
  const a = new HandshakeState('Noise_NN_25519_ChaChaPoly_BLAKE2b', { initiator: true });
  assert.throws(() => a.readMessage(new Uint8Array(32)), UsageError);
  assert.ok(a.isMyTurn);
  assert.throws(() => a.writeMessage(new Uint8Array(65536)), UsageError);
  assert.ok(a.isMyTurn);
});

test('a low-order point is refused', () => {
  const b = new HandshakeState('Noise_NN_25519_ChaChaPoly_BLAKE2b', { initiator: false });
  b.readMessage(new Uint8Array(32)); // the all-zero point as the initiator's ephemeral
  assert.throws(() => b.writeMessage(), CryptoError);
});
