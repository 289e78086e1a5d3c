// Relay authentication, the node's side, and the transcripts controllers sign;
// mirroring starmux/relay_auth.py.
//
//   new NodeAuth(keys, card, {pinnedRelayKey, rng})
//       .receiveChallenge(frame) -> AUTH frame bytes to send
//       .receiveWelcome(frame) -> {status, account, relayCard, relayTime}
//   grantTranscript(account, machineCard, issuedAt), revokeTranscript(account, machineKey, issuedAt)
//   SessionStatus: {CONTROLLER, MACHINE, UNPAIRED, UNREGISTERED}
//
// The exchange: relay -> CHALLENGE(relay_card, nonce, relay_time); node -> AUTH(card,
// client_nonce, sig over transcript(AUTH_DOMAIN, relay_key, nonce, client_nonce, card));
// relay -> WELCOME(status, account, sig over transcript(WELCOME_DOMAIN, relay_key, nonce,
// client_nonce, node_key, status, account), relay_time). NodeAuth reaches DONE only after
// the relay's card, its pin and its signature check; any failure is final.

import { equal, utf8 } from './bytes.js';
import { CONTROL } from './codec.js';
import { CryptoError, RelayKeyMismatch, RemoteProtocolError, UsageError } from './errors.js';
import { fingerprint } from './fingerprint.js';
import { FrameType, encodeFrame } from './frames.js';
import { Role, decodeCard, verifySignature } from './identity.js';
import { randomBytes } from './noise.js';
import { signedTime, transcript } from './transcript.js';

export const AUTH_DOMAIN = 'starmux/relay-auth/v1';
export const WELCOME_DOMAIN = 'starmux/relay-welcome/v1';
export const GRANT_DOMAIN = 'starmux/machine-grant/v1';
export const REVOKE_DOMAIN = 'starmux/machine-revoke/v1';
export const NONCE_SIZE = 32;
export const SessionStatus = Object.freeze({
  CONTROLLER: 'controller',
  MACHINE: 'machine',
  UNPAIRED: 'unpaired',
  UNREGISTERED: 'unregistered',
});

export const authTranscript = (relayKey, nonce, clientNonce, card) =>
  transcript(AUTH_DOMAIN, relayKey, nonce, clientNonce, card);

export const welcomeTranscript = (relayKey, nonce, clientNonce, nodeKey, status, account) =>
  transcript(WELCOME_DOMAIN, relayKey, nonce, clientNonce, nodeKey, utf8(status), account);

export const grantTranscript = (account, machineCard, issuedAt) =>
  transcript(GRANT_DOMAIN, account, machineCard, signedTime(issuedAt));

export const revokeTranscript = (account, machineKey, issuedAt) =>
  transcript(REVOKE_DOMAIN, account, machineKey, signedTime(issuedAt));

export class NodeAuth {
  #keys;
  #card;
  #pin;
  #rng;
  #state = 'await-challenge';
  #nonce = null;
  #clientNonce = null;
  #relayCard = null;

  constructor(keys, card, { pinnedRelayKey = null, rng = randomBytes } = {}) {
    if (!equal(card.signPublic, keys.signPublic)) throw new UsageError('the card does not belong to these keys');
    this.#keys = keys;
    this.#card = card.encoded;
    this.#pin = pinnedRelayKey;
    this.#rng = rng;
    this.result = null;
  }

  get state() {
    return this.#state;
  }

  receiveChallenge(frame) {
    this.#expect('await-challenge');
    let challenge;
    let relayCard;
    try {
      if (frame.type !== FrameType.CHALLENGE) throw new RemoteProtocolError("expected the relay's challenge");
      challenge = CONTROL.decodeAs(frame.body, 'auth-challenge');
      relayCard = decodeCard(challenge.relay_card);
      if (relayCard.role !== Role.RELAY || challenge.nonce.length !== NONCE_SIZE) {
        throw new RemoteProtocolError('malformed relay challenge');
      }
      if (this.#pin !== null && !equal(this.#pin, relayCard.signPublic)) {
        throw new RelayKeyMismatch(
          `the relay's key changed: expected ${fingerprint(this.#pin)}, got ${relayCard.fingerprint}`,
          { hint: 'if the relay was reinstalled on purpose, re-pin it; otherwise someone may be impersonating it' },
        );
      }
    } catch (error) {
      this.#state = 'failed';
      throw error;
    }
    this.#relayCard = relayCard;
    this.#nonce = challenge.nonce;
    this.#clientNonce = this.#rng(NONCE_SIZE);
    const signature = this.#keys.sign(authTranscript(relayCard.signPublic, this.#nonce, this.#clientNonce, this.#card));
    this.#state = 'await-welcome';
    const body = CONTROL.encode('auth-response', { card: this.#card, client_nonce: this.#clientNonce, signature });
    return encodeFrame(FrameType.AUTH, new Uint8Array(0), body);
  }

  receiveWelcome(frame) {
    this.#expect('await-welcome');
    let welcome;
    try {
      if (frame.type !== FrameType.WELCOME) throw new RemoteProtocolError("expected the relay's welcome");
      welcome = CONTROL.decodeAs(frame.body, 'welcome');
      verifySignature(
        this.#relayCard.signPublic,
        welcomeTranscript(this.#relayCard.signPublic, this.#nonce, this.#clientNonce, this.#keys.signPublic, welcome.status, welcome.account),
        welcome.signature,
      );
    } catch (error) {
      this.#state = 'failed';
      throw error;
    }
    this.#state = 'done';
    this.result = Object.freeze({
      status: welcome.status,
      account: welcome.account,
      relayCard: this.#relayCard,
      relayTime: welcome.relay_time,
    });
    return this.result;
  }

  #expect(state) {
    if (this.#state === 'failed') throw new CryptoError('relay authentication already failed');
    if (this.#state !== state) throw new UsageError(`relay auth is in state ${this.#state}, not ${state}`);
  }
}
