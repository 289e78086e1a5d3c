// The transport phase of a Noise session, mirroring starmux/channel.py.
//
//   SecureChannel.fromHandshake(hs, {rekeyEvery = 2**16, pad = false})
//   channel.encrypt(plaintext) -> ciphertext; channel.decrypt(ciphertext) -> plaintext
//   channel.close(); channel.closed; channel.handshakeHash; channel.remoteStatic
//
// Invariants: strict order and no replay (Noise counter nonces); any CryptoError fails
// the channel for good and forgets its keys (later calls throw CryptoError); both sides
// rekey after every `rekeyEvery` messages in a direction; with pad every plaintext is
// padded (padding.js) and bad padding fails the channel like a bad tag; one-way
// patterns only send from the initiator; a key-less cipher is never used here.

import { CryptoError, UsageError } from './errors.js';
import { MAX_MESSAGE_LEN, TAGLEN, isOneWay } from './noise.js';
import * as padding from './padding.js';

export const MAX_PLAINTEXT_LEN = MAX_MESSAGE_LEN - TAGLEN;
const NO_AD = new Uint8Array(0);

export class SecureChannel {
  #send;
  #receive;
  #rekeyEvery;
  #pad;
  #maxPlaintext;
  #sent = 0;
  #received = 0;
  #state = 'open';

  constructor(send, receive, { handshakeHash, remoteStatic, rekeyEvery = 2 ** 16, pad = false }) {
    if (!Number.isInteger(rekeyEvery) || rekeyEvery < 1) throw new UsageError('rekeyEvery must be a positive integer');
    for (const cipher of [send, receive]) {
      if (cipher !== null && !cipher.hasKey()) throw new UsageError('a transport cipher must have a key');
    }
    this.#send = send;
    this.#receive = receive;
    this.#rekeyEvery = rekeyEvery;
    this.#pad = pad;
    this.#maxPlaintext = pad ? padding.MAX_UNPADDED : MAX_PLAINTEXT_LEN;
    this.handshakeHash = handshakeHash;
    this.remoteStatic = remoteStatic;
  }

  static fromHandshake(hs, { rekeyEvery = 2 ** 16, pad = false } = {}) {
    if (!hs.isComplete) throw new UsageError('the handshake is not complete');
    const handshakeHash = hs.handshakeHash;
    const remoteStatic = hs.remoteStatic;
    let [send, receive] = hs.split();
    if (isOneWay(hs.pattern)) {
      if (hs.initiator) receive = null;
      else send = null;
    }
    return new SecureChannel(send, receive, { handshakeHash, remoteStatic, rekeyEvery, pad });
  }

  get closed() {
    return this.#state !== 'open';
  }

  close() {
    if (this.#state === 'open') this.#state = 'closed';
    this.#forgetKeys();
  }

  encrypt(plaintext) {
    if (!(plaintext instanceof Uint8Array)) throw new UsageError('plaintext must be a Uint8Array');
    this.#requireOpen();
    if (plaintext.length > this.#maxPlaintext) {
      throw new UsageError(`plaintext is ${plaintext.length} bytes; the limit is ${this.#maxPlaintext}`);
    }
    if (this.#send === null) throw new UsageError('this side of a one-way pattern cannot send');
    const data = this.#pad ? padding.pad(plaintext) : plaintext;
    try {
      const ciphertext = this.#send.encryptWithAd(NO_AD, data);
      this.#sent += 1;
      if (this.#sent % this.#rekeyEvery === 0) this.#send.rekey();
      return ciphertext;
    } catch (error) {
      if (error instanceof CryptoError) this.#fail();
      throw error;
    }
  }

  decrypt(ciphertext) {
    if (!(ciphertext instanceof Uint8Array)) throw new UsageError('ciphertext must be a Uint8Array');
    this.#requireOpen();
    if (this.#receive === null) throw new UsageError('this side of a one-way pattern cannot receive');
    try {
      if (ciphertext.length > MAX_MESSAGE_LEN) throw new CryptoError();
      let plaintext = this.#receive.decryptWithAd(NO_AD, ciphertext);
      this.#received += 1;
      if (this.#received % this.#rekeyEvery === 0) this.#receive.rekey();
      if (this.#pad) plaintext = padding.unpad(plaintext);
      return plaintext;
    } catch (error) {
      if (error instanceof CryptoError) this.#fail();
      throw error;
    }
  }

  #requireOpen() {
    if (this.#state === 'failed') throw new CryptoError();
    if (this.#state === 'closed') throw new UsageError('the channel was closed');
  }

  #fail() {
    this.#state = 'failed';
    this.#forgetKeys();
  }

  #forgetKeys() {
    this.#send?.forget();
    this.#receive?.forget();
    this.#send = null;
    this.#receive = null;
  }
}
