// The live channel between a controller and a machine: Noise_KK on every (re)connect,
// then padded APP messages; mirroring starmux/live_channel.py.
//
//   initiate(keys, machineCard, {relayKey, rng}) -> [hs, body]     controller, message 1
//   finish(hs, payload) -> LiveChannel                             controller, message 2
//   respond(keys, controllerCard, payload, {relayKey, rng}) -> [LiveChannel, body]  machine
//   channel.seal(kind, fields) -> SESSION_TRANSPORT body; channel.open(payload) -> message
//   resetBody(), livePrologue(relayKey, controllerKey, machineKey), REKEY_EVERY
//
// No application data rides in handshake messages (a payload there fails the
// handshake); any decryption, padding or decoding failure closes the channel for good:
// the controller sends SESSION_RESET and handshakes again.

import { SecureChannel } from './channel.js';
import { APP } from './codec.js';
import { Kind, wrap } from './e2e.js';
import { CryptoError, RemoteProtocolError } from './errors.js';
import { fingerprintBytes } from './fingerprint.js';
import { HandshakeState, KeyPair, randomBytes } from './noise.js';
import { transcript } from './transcript.js';

export const LIVE_PROTOCOL = 'Noise_KK_25519_ChaChaPoly_BLAKE2b';
export const LIVE_DOMAIN = 'starmux/live/v1';
export const REKEY_EVERY = 10000;
const EMPTY = new Uint8Array(0);

export const livePrologue = (relayKey, controllerKey, machineKey) =>
  transcript(LIVE_DOMAIN, relayKey, fingerprintBytes(controllerKey), fingerprintBytes(machineKey));

export class LiveChannel {
  #channel;

  constructor(channel) {
    this.#channel = channel;
  }

  get closed() {
    return this.#channel.closed;
  }

  get handshakeHash() {
    return this.#channel.handshakeHash;
  }

  seal(kind, fields) {
    return wrap(Kind.SESSION_TRANSPORT, this.#channel.encrypt(APP.encode(kind, fields)));
  }

  open(payload) {
    const plaintext = this.#channel.decrypt(payload);
    try {
      return APP.decode(plaintext);
    } catch (error) {
      if (error instanceof RemoteProtocolError) this.#channel.close();
      throw error;
    }
  }

  close() {
    this.#channel.close();
  }
}

export function initiate(keys, machineCard, { relayKey, rng = randomBytes }) {
  const hs = new HandshakeState(LIVE_PROTOCOL, {
    initiator: true,
    prologue: livePrologue(relayKey, keys.signPublic, machineCard.signPublic),
    s: KeyPair.fromPrivate(keys.dhPrivate),
    rs: machineCard.dhPublic,
    rng,
  });
  return [hs, wrap(Kind.SESSION_HANDSHAKE, hs.writeMessage(EMPTY))];
}

export function finish(hs, payload) {
  if (hs.readMessage(payload).length > 0) throw new CryptoError();
  return new LiveChannel(SecureChannel.fromHandshake(hs, { rekeyEvery: REKEY_EVERY, pad: true }));
}

export function respond(keys, controllerCard, payload, { relayKey, rng = randomBytes }) {
  const hs = new HandshakeState(LIVE_PROTOCOL, {
    initiator: false,
    prologue: livePrologue(relayKey, controllerCard.signPublic, keys.signPublic),
    s: KeyPair.fromPrivate(keys.dhPrivate),
    rs: controllerCard.dhPublic,
    rng,
  });
  if (hs.readMessage(payload).length > 0) throw new CryptoError(); // data in message 1 is refused
  const reply = wrap(Kind.SESSION_HANDSHAKE, hs.writeMessage(EMPTY));
  return [new LiveChannel(SecureChannel.fromHandshake(hs, { rekeyEvery: REKEY_EVERY, pad: true })), reply];
}

export const resetBody = () => wrap(Kind.SESSION_RESET);
