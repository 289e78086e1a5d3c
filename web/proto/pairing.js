// Pairing a machine, both ends, sans-I/O: Noise_XXpsk3 through the relay, then the
// grant; mirroring starmux/pairing.py (same phases, same checks, same messages).
//
//   new ControllerPairing(keys, card, code, {relayKey, account, rng})
//       .start(machineKey) -> body;  .receive(body) -> body | null;
//       .grant(keys, {issuedAt}) -> [signature, body];  .comparisonCode;  .machineCard
//       .machineName;  .phase
//   new MachinePairing(keys, card, {relayKey, ticket, secret, privateName, rng})
//       .receive(body) -> body | null;  .controllerCard;  .account;  .grant
//   abortBody(), cancelBody(), pairingPrologue(relayKey, ticket, machineFp)
//
//   controller (initiator)                    machine (responder)
//   -> e                  (no payload)
//                                             <- e, ee, s, es  + machine card
//   check the card (its DH key, the code's fingerprint, role machine)
//   -> s, se, psk         + controller card, account
//                                             check the card; the psk proves the secret
//                                             pairing-accepted (encrypted)
//   the person compares the codes; grant-machine to the relay
//   pairing-granted       (encrypted)         verify the grant; pairing-stored
// Every failure is final for the attempt (PairingFailed; aborted when the peer said so).

import { equal } from './bytes.js';
import { SecureChannel } from './channel.js';
import { APP } from './codec.js';
import { Kind, unwrap, wrap } from './e2e.js';
import { CryptoError, PairingFailed, RemoteProtocolError, UsageError } from './errors.js';
import { comparisonCode, fingerprint, fingerprintBytes, fingerprintFromText, fingerprintsMatch } from './fingerprint.js';
import { MAX_NAME_LENGTH, Role, checkName, decodeCard, verifySignature } from './identity.js';
import { HandshakeState, KeyPair, randomBytes } from './noise.js';
import { grantTranscript } from './relay_auth.js';
import { transcript } from './transcript.js';

export const PAIR_PROTOCOL = 'Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b';
export const PAIR_DOMAIN = 'starmux/pair/v1';
const EMPTY = new Uint8Array(0);

export const pairingPrologue = (relayKey, ticket, machineFp) => transcript(PAIR_DOMAIN, relayKey, ticket, machineFp);

/** Decode a pairing-identity and check its card binds the handshake's static key. */
export function readIdentity(payload, role, remoteStatic, fail) {
  let identity;
  let card;
  try {
    identity = APP.decodeAs(payload, 'pairing-identity');
    card = decodeCard(identity.card);
  } catch (error) {
    if (error instanceof RemoteProtocolError || error instanceof CryptoError) throw fail('the other side sent an invalid identity card');
    throw error;
  }
  if (card.role !== role) throw fail(`the other side is a ${card.role}, not a ${role}`);
  if (remoteStatic === null || !equal(card.dhPublic, remoteStatic)) throw fail("the other side's card does not match its handshake key");
  return [card, identity.account];
}

class Side {
  constructor(phase) {
    this.phase = phase;
    this.channel = null;
    this.handshakeHash = null;
  }

  get comparisonCode() {
    if (this.handshakeHash === null) throw new UsageError('no comparison code before the handshake completes');
    return comparisonCode(this.handshakeHash);
  }

  fail(message, { aborted = false } = {}) {
    this.phase = 'failed';
    this.channel = null;
    return new PairingFailed(message, { aborted });
  }

  expect(phase) {
    if (this.phase === 'failed') throw new PairingFailed('this pairing attempt already failed');
    if (this.phase !== phase) throw new PairingFailed(`unexpected pairing message in phase ${this.phase}`);
  }

  decrypt(body) {
    let kind;
    let payload;
    try {
      [kind, payload] = unwrap(body);
    } catch {
      throw this.fail('unexpected message during pairing');
    }
    if (kind === Kind.PAIR_ABORT) {
      throw this.fail('the machine refused the pairing: the code is wrong or stale (its secret did not match)', { aborted: true });
    }
    if (kind !== Kind.PAIR_TRANSPORT || this.channel === null) throw this.fail('unexpected message during pairing');
    try {
      return this.channel.decrypt(payload);
    } catch (error) {
      if (error instanceof CryptoError) throw this.fail('a pairing message failed to decrypt');
      throw error;
    }
  }

  receiveMessage(body, kind) {
    try {
      return APP.decodeAs(this.decrypt(body), kind);
    } catch (error) {
      if (error instanceof RemoteProtocolError) throw this.fail('the other side sent an invalid pairing message');
      throw error;
    }
  }

  seal(kind, fields) {
    return wrap(Kind.PAIR_TRANSPORT, this.channel.encrypt(APP.encode(kind, fields)));
  }
}

export class ControllerPairing extends Side {
  #card;
  #code;
  #account;
  #machineKey = null;
  #hs;

  constructor(keys, card, code, { relayKey, account, rng = randomBytes }) {
    super('start');
    this.#card = card;
    this.#code = code;
    this.#account = account;
    this.machineCard = null;
    this.machineName = '';
    this.#hs = new HandshakeState(PAIR_PROTOCOL, {
      initiator: true,
      prologue: pairingPrologue(relayKey, code.ticket, fingerprintFromText(code.machineFingerprint)),
      s: KeyPair.fromPrivate(keys.dhPrivate),
      psks: [code.secret],
      rng,
    });
  }

  start(machineKey) {
    this.expect('start');
    if (!fingerprintsMatch(fingerprint(machineKey), this.#code.machineFingerprint)) {
      throw this.fail(`the machine behind this ticket has fingerprint ${fingerprint(machineKey)}, not ${this.#code.machineFingerprint} as the code says; refusing`);
    }
    this.#machineKey = machineKey;
    this.phase = 'await-identity';
    return wrap(Kind.PAIR_HANDSHAKE, this.#hs.writeMessage(EMPTY));
  }

  receive(body) {
    if (this.phase === 'await-identity') {
      let kind;
      let payload;
      try {
        [kind, payload] = unwrap(body);
      } catch {
        throw this.fail('unexpected message during pairing');
      }
      if (kind === Kind.PAIR_ABORT) throw this.fail('the machine aborted the pairing', { aborted: true });
      if (kind !== Kind.PAIR_HANDSHAKE) throw this.fail('unexpected message during pairing');
      let identity;
      try {
        identity = this.#hs.readMessage(payload);
      } catch (error) {
        if (error instanceof CryptoError) throw this.fail("the machine's handshake message is invalid");
        throw error;
      }
      const [card] = readIdentity(identity, Role.MACHINE, this.#hs.remoteStatic, (m) => this.fail(m));
      if (!equal(card.signPublic, this.#machineKey) || !fingerprintsMatch(card.fingerprint, this.#code.machineFingerprint)) {
        throw this.fail("the machine's identity does not match the fingerprint in the code; refusing");
      }
      this.machineCard = card;
      this.machineName = card.name;
      const final = this.#hs.writeMessage(APP.encode('pairing-identity', { card: this.#card.encoded, account: this.#account }));
      this.handshakeHash = this.#hs.handshakeHash;
      this.channel = SecureChannel.fromHandshake(this.#hs);
      this.phase = 'await-accepted';
      return wrap(Kind.PAIR_HANDSHAKE, final);
    }
    if (this.phase === 'await-accepted') {
      const accepted = this.receiveMessage(body, 'pairing-accepted');
      if (accepted.name) {
        try {
          checkName(accepted.name);
        } catch {
          throw this.fail('the machine sent an invalid name');
        }
        this.machineName = accepted.name;
      }
      this.phase = 'confirmed';
      return null;
    }
    if (this.phase === 'await-stored') {
      this.receiveMessage(body, 'pairing-stored');
      this.phase = 'paired';
      return null;
    }
    throw this.fail(`unexpected pairing message in phase ${this.phase}`);
  }

  /** Sign the grant: [signature for grant-machine, body to send to the machine]. */
  grant(keys, { issuedAt }) {
    this.expect('confirmed');
    const signature = keys.sign(grantTranscript(this.#account, this.machineCard.encoded, issuedAt));
    this.phase = 'await-stored';
    return [signature, this.seal('pairing-granted', { account: this.#account, issued_at: issuedAt, signature })];
  }
}

export class MachinePairing extends Side {
  #card;
  #privateName;
  #hs;

  constructor(keys, card, { relayKey, ticket, secret, privateName = '', rng = randomBytes }) {
    super('await-first');
    this.#card = card;
    this.#privateName = privateName;
    this.controllerCard = null;
    this.account = EMPTY;
    this.grant = null;
    this.#hs = new HandshakeState(PAIR_PROTOCOL, {
      initiator: false,
      prologue: pairingPrologue(relayKey, ticket, fingerprintBytes(keys.signPublic)),
      s: KeyPair.fromPrivate(keys.dhPrivate),
      psks: [secret],
      rng,
    });
  }

  receive(body) {
    if (this.phase === 'await-grant') {
      const granted = this.receiveMessage(body, 'pairing-granted');
      try {
        verifySignature(this.controllerCard.signPublic, grantTranscript(granted.account, this.#card.encoded, granted.issued_at), granted.signature);
      } catch (error) {
        if (error instanceof CryptoError) throw this.fail("the controller's grant does not verify");
        throw error;
      }
      if (!equal(granted.account, this.account)) throw this.fail('the grant names another account than the handshake');
      this.grant = granted;
      this.phase = 'paired';
      return this.seal('pairing-stored', {});
    }
    let kind;
    let payload;
    try {
      [kind, payload] = unwrap(body);
    } catch {
      throw this.fail('unexpected message during pairing');
    }
    if (kind !== Kind.PAIR_HANDSHAKE) throw this.fail('unexpected message during pairing');
    try {
      if (this.phase === 'await-first') {
        if (this.#hs.readMessage(payload).length > 0) throw this.fail('the first pairing message must carry no data');
        this.phase = 'await-final';
        const identity = APP.encode('pairing-identity', { card: this.#card.encoded, account: EMPTY });
        return wrap(Kind.PAIR_HANDSHAKE, this.#hs.writeMessage(identity));
      }
      this.expect('await-final');
      payload = this.#hs.readMessage(payload);
    } catch (error) {
      if (error instanceof CryptoError) throw this.fail('a controller tried to pair with a wrong or stale secret');
      throw error;
    }
    const [card, account] = readIdentity(payload, Role.CONTROLLER, this.#hs.remoteStatic, (m) => this.fail(m));
    if (account.length !== 16) throw this.fail('the controller sent no valid account id');
    this.controllerCard = card;
    this.account = account;
    this.handshakeHash = this.#hs.handshakeHash;
    this.channel = SecureChannel.fromHandshake(this.#hs);
    this.phase = 'await-grant';
    return this.seal('pairing-accepted', { name: this.#privateName });
  }
}

export const abortBody = () => wrap(Kind.PAIR_ABORT);
export const cancelBody = () => wrap(Kind.PAIR_CANCEL);
export { MAX_NAME_LENGTH };
