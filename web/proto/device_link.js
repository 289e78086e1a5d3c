// Linking a new controller device to an account, both ends, sans-I/O; mirroring
// starmux/device_link.py. The same Noise_XXpsk3 and pairing-identity as pairing, with
// the inviter (an owner, the responder) where the machine stands:
//
//   new device (initiator)                   inviter (responder, an owner)
//   -> e                  (no payload)
//                                            <- e, ee, s, es  + inviter card, account
//   check: a controller card binding its DH key, the code's fingerprint
//   -> s, se, psk         + new device's card
//                                            the psk proves the code was read
//   both show the comparison code; the inviter appends add(device, role) at the relay
//   (with the ticket) and sends link-welcome (account, log, machine cards)
//   verify the log names this device with the promised role; pairing-stored
//
//   new Inviter(keys, card, {account, relayKey, ticket, secret, rng})
//       .receive(body) -> body | null;  .device (the new device's card, once known);
//       .comparisonCode;  .welcome(log, machineCards) -> body;  .phase
//   new NewDevice(keys, card, code, {relayKey, rng})
//       .start() -> body;  .receive(body) -> body | null;  .inviter;  .account;  .log;
//       .machines (cards);  .comparisonCode;  .phase
//   linkPrologue(relayKey, ticket, inviterFp)
//
// The join direction (starmux/device_link.py's LinkAttempt with shows=True on the new
// device): a browser without a camera shows a join code, an owner reads it with
// `starmux devices add CODE`. The new device holds the ticket and is the responder;
// the owner opens the ticket and is the initiator; the domain is starmux/join/v1 and
// the prologue names the new device's own fingerprint. After the handshake the new
// device's person confirms the comparison code and says so (pairing-accepted); only
// then does the owner append add(device, role) — the owner picks the role.
//
//   owner (initiator)                       new device (responder, shows the code)
//   -> e                                    <- e, ee, s, es  + new device's card
//   -> s, se, psk + owner card, account     (psk proves the code was read)
//                                           person confirms -> pairing-accepted
//   link-welcome (account, log, machines) ->  verify: the log adds this device
//                                           <- pairing-stored
//
//   new JoiningDevice(keys, card, code, {relayKey, rng})   code: parseJoinCode(…)
//       .receive(body) -> body | null;  .accept() -> body;  .owner;  .account;
//       .comparisonCode;  .role, .log, .machines (once linked);  .phase

import { equal } from './bytes.js';
import { SecureChannel } from './channel.js';
import { APP } from './codec.js';
import { decodeEntries, DeviceLog } from './device_log.js';
import { Kind, unwrap, wrap } from './e2e.js';
import { CryptoError, DeviceLogError, PairingFailed, RemoteProtocolError, UsageError } from './errors.js';
import { comparisonCode, fingerprintBytes, fingerprintFromText, fingerprintsMatch } from './fingerprint.js';
import { Role, decodeCard } from './identity.js';
import { HandshakeState, KeyPair, randomBytes } from './noise.js';
import { PAIR_PROTOCOL, readIdentity } from './pairing.js';
import { transcript } from './transcript.js';

export const LINK_DOMAIN = 'starmux/link/v1';
export const JOIN_DOMAIN = 'starmux/join/v1';
const EMPTY = new Uint8Array(0);

export const linkPrologue = (relayKey, ticket, inviterFp) => transcript(LINK_DOMAIN, relayKey, ticket, inviterFp);
export const joinPrologue = (relayKey, ticket, deviceFp) => transcript(JOIN_DOMAIN, relayKey, ticket, deviceFp);

class End {
  constructor(hs, phase) {
    this.hs = hs;
    this.phase = phase;
    this.channel = null;
    this.comparisonCode = '';
    this.account = EMPTY;
  }

  fail(message, { aborted = false } = {}) {
    this.phase = 'failed';
    this.channel = null;
    return new PairingFailed(message, { aborted });
  }

  payload(body, kind) {
    let got;
    let payload;
    try {
      [got, payload] = unwrap(body);
    } catch {
      throw this.fail('unexpected message while linking');
    }
    if (got === Kind.PAIR_ABORT) throw this.fail('the other device ended the link attempt', { aborted: true });
    if (got !== kind) throw this.fail('unexpected message while linking');
    if (kind === Kind.PAIR_TRANSPORT) {
      if (this.channel === null) throw this.fail('unexpected message while linking');
      try {
        return this.channel.decrypt(payload);
      } catch (error) {
        if (error instanceof CryptoError) throw this.fail('a link message failed to decrypt');
        throw error;
      }
    }
    return payload;
  }

  finishHandshake() {
    this.comparisonCode = comparisonCode(this.hs.handshakeHash);
    this.channel = SecureChannel.fromHandshake(this.hs);
  }

  identity(payload) {
    return readIdentity(payload, Role.CONTROLLER, this.hs.remoteStatic, (message) => this.fail(
      message.replace('the other side', 'the other device').replace(', not a controller', ', not a controller device'),
    ));
  }

  seal(kind, fields) {
    return wrap(Kind.PAIR_TRANSPORT, this.channel.encrypt(APP.encode(kind, fields)));
  }
}

export class Inviter extends End {
  #card;

  constructor(keys, card, { account, relayKey, ticket, secret, rng = randomBytes }) {
    super(new HandshakeState(PAIR_PROTOCOL, {
      initiator: false,
      prologue: linkPrologue(relayKey, ticket, fingerprintBytes(keys.signPublic)),
      s: KeyPair.fromPrivate(keys.dhPrivate),
      psks: [secret],
      rng,
    }), 'await-first');
    this.#card = card;
    this.account = account;
    this.device = null;
  }

  receive(body) {
    if (this.phase === 'await-stored') {
      try {
        APP.decodeAs(this.payload(body, Kind.PAIR_TRANSPORT), 'pairing-stored');
      } catch (error) {
        if (error instanceof RemoteProtocolError) throw this.fail('the new device sent an invalid message');
        throw error;
      }
      this.phase = 'linked';
      return null;
    }
    let payload = this.payload(body, Kind.PAIR_HANDSHAKE);
    try {
      if (this.phase === 'await-first') {
        if (this.hs.readMessage(payload).length > 0) throw this.fail('the first link message must carry no data');
        this.phase = 'await-final';
        const me = APP.encode('pairing-identity', { card: this.#card.encoded, account: this.account });
        return wrap(Kind.PAIR_HANDSHAKE, this.hs.writeMessage(me));
      }
      if (this.phase !== 'await-final') throw this.fail(`unexpected link message in phase ${this.phase}`);
      payload = this.hs.readMessage(payload);
    } catch (error) {
      if (error instanceof CryptoError) throw this.fail('a device tried to link with a wrong or stale code');
      throw error;
    }
    [this.device] = this.identity(payload);
    this.finishHandshake();
    this.phase = 'confirming';
    return null;
  }

  /** After the relay accepted the add entry: everything the new device needs. */
  welcome(log, machineCards) {
    if (this.phase !== 'confirming') throw new UsageError('welcome only after the handshake');
    this.phase = 'await-stored';
    return this.seal('link-welcome', { account: this.account, log: log.encode(), machines: machineCards });
  }
}

export class NewDevice extends End {
  #keys;
  #card;
  #code;

  constructor(keys, card, code, { relayKey, rng = randomBytes }) {
    super(new HandshakeState(PAIR_PROTOCOL, {
      initiator: true,
      prologue: linkPrologue(relayKey, code.ticket, fingerprintFromText(code.inviterFingerprint)),
      s: KeyPair.fromPrivate(keys.dhPrivate),
      psks: [code.secret],
      rng,
    }), 'await-identity');
    this.#keys = keys;
    this.#card = card;
    this.#code = code;
    this.inviter = null;
    this.log = null;
    this.machines = [];
  }

  start() {
    return wrap(Kind.PAIR_HANDSHAKE, this.hs.writeMessage(EMPTY));
  }

  receive(body) {
    if (this.phase === 'await-identity') {
      let payload;
      try {
        payload = this.hs.readMessage(this.payload(body, Kind.PAIR_HANDSHAKE));
      } catch (error) {
        if (error instanceof CryptoError) throw this.fail("the inviter's handshake message is invalid");
        throw error;
      }
      [this.inviter, this.account] = this.identity(payload);
      if (this.account.length !== 16 || !fingerprintsMatch(this.inviter.fingerprint, this.#code.inviterFingerprint)) {
        throw this.fail('the inviter is not the device the code names; refusing');
      }
      const final = this.hs.writeMessage(APP.encode('pairing-identity', { card: this.#card.encoded, account: EMPTY }));
      this.finishHandshake();
      this.phase = 'await-welcome';
      return wrap(Kind.PAIR_HANDSHAKE, final);
    }
    if (this.phase !== 'await-welcome') throw this.fail(`unexpected link message in phase ${this.phase}`);
    let welcome;
    let log;
    let machines;
    try {
      welcome = APP.decodeAs(this.payload(body, Kind.PAIR_TRANSPORT), 'link-welcome');
      log = DeviceLog.verify(decodeEntries(welcome.log), { account: this.account });
      machines = welcome.machines.map(decodeCard);
    } catch (error) {
      if (error instanceof DeviceLogError && error.kind !== 'format') throw this.fail(`the inviter's device log is invalid: ${error.message}`);
      if (error instanceof RemoteProtocolError || error instanceof CryptoError) throw this.fail('the inviter sent an invalid account, log or machine');
      throw error;
    }
    const me = log.device(this.#keys.signPublic);
    if (me === null || me.role !== this.#code.role || !equal(welcome.account, this.account)) {
      throw this.fail("the inviter's log does not add this device as the code promised");
    }
    if (machines.some((card) => card.role !== Role.MACHINE)) throw this.fail("the inviter sent a machine card that is not a machine's");
    this.log = log;
    this.machines = machines;
    this.phase = 'linked';
    return this.seal('pairing-stored', {});
  }
}

export class JoiningDevice extends End {
  #keys;
  #card;

  constructor(keys, card, code, { relayKey, rng = randomBytes }) {
    if (!fingerprintsMatch(keys.fingerprint, code.deviceFingerprint)) {
      throw new UsageError('the join code must name the device that shows it');
    }
    super(new HandshakeState(PAIR_PROTOCOL, {
      initiator: false,
      prologue: joinPrologue(relayKey, code.ticket, fingerprintFromText(code.deviceFingerprint)),
      s: KeyPair.fromPrivate(keys.dhPrivate),
      psks: [code.secret],
      rng,
    }), 'await-first');
    this.#keys = keys;
    this.#card = card;
    this.owner = null;
    this.role = null;
    this.log = null;
    this.machines = [];
  }

  receive(body) {
    if (this.phase === 'await-first' || this.phase === 'await-final') return this.#handshake(this.payload(body, Kind.PAIR_HANDSHAKE));
    if (this.phase !== 'await-welcome') {
      // also in 'confirming': the owner must wait for this person's pairing-accepted
      throw this.fail(`unexpected link message in phase ${this.phase}`);
    }
    let welcome;
    let log;
    let machines;
    try {
      welcome = APP.decodeAs(this.payload(body, Kind.PAIR_TRANSPORT), 'link-welcome');
      log = DeviceLog.verify(decodeEntries(welcome.log), { account: this.account });
      machines = welcome.machines.map(decodeCard);
    } catch (error) {
      if (error instanceof PairingFailed) throw error;
      if (error instanceof DeviceLogError && error.kind !== 'format') throw this.fail(`the owner's device log is invalid: ${error.message}`);
      if (error instanceof RemoteProtocolError || error instanceof CryptoError || error instanceof DeviceLogError) {
        throw this.fail('the owner sent an invalid account, log or machine');
      }
      throw error;
    }
    const me = log.device(this.#keys.signPublic);
    if (me === null || !equal(welcome.account, this.account)) throw this.fail("the owner's log does not add this device");
    if (machines.some((card) => card.role !== Role.MACHINE)) throw this.fail("the owner sent a machine card that is not a machine's");
    this.log = log;
    this.machines = machines;
    this.role = me.role;
    this.phase = 'linked';
    return this.seal('pairing-stored', {});
  }

  /** This device's person saw the same comparison code as the owner's. */
  accept() {
    if (this.phase !== 'confirming') throw new UsageError('accept only once the handshake is read');
    this.phase = 'await-welcome';
    return this.seal('pairing-accepted', { name: '' });
  }

  #handshake(payload) {
    let identity;
    try {
      if (this.phase === 'await-first') {
        if (this.hs.readMessage(payload).length > 0) throw this.fail('the first link message must carry no data');
        this.phase = 'await-final';
        const me = APP.encode('pairing-identity', { card: this.#card.encoded, account: EMPTY });
        return wrap(Kind.PAIR_HANDSHAKE, this.hs.writeMessage(me));
      }
      identity = this.hs.readMessage(payload);
    } catch (error) {
      // the psk is mixed into ->s,se,psk: almost always a wrong or stale code
      if (error instanceof CryptoError) throw this.fail('a device tried to link with a wrong or stale code');
      throw error;
    }
    let account;
    [this.owner, account] = this.identity(identity);
    if (account.length !== 16) throw this.fail('the other device sent no valid account id');
    this.account = account;
    this.finishHandshake();
    this.phase = 'confirming';
    return null;
  }
}
