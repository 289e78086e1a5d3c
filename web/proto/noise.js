// Noise Protocol Framework (rev 34) for 25519_ChaChaPoly_BLAKE2b, sans-I/O, mirroring
// starmux/noise/{primitives,symmetric,handshake}.py one for one (same names, camelCase).
//
//   KeyPair.fromPrivate(priv) / KeyPair.generate(rng)     {private, public}
//   dh(keyPair, publicKey), aeadEncrypt/aeadDecrypt(k, n, ad, data), hash(data), hkdf(ck, ikm, n)
//   new CipherState(key?)   encryptWithAd / decryptWithAd / rekey / nonce
//   new SymmetricState(protocolName)
//   new HandshakeState(protocolName, {initiator, prologue, s, e, rs, psks, rng})
//       writeMessage(payload) -> Uint8Array, readMessage(message) -> payload,
//       isComplete, isMyTurn, handshakeHash, remoteStatic, split() -> [send, receive]
//
// Primitives come from the vendored audited @noble libraries: X25519 (@noble/curves),
// ChaCha20-Poly1305 (@noble/ciphers), BLAKE2b and HMAC (@noble/hashes); nothing here
// implements a cipher, a curve or a hash.
//
// Invariants (as in Python): every crypto failure is an opaque CryptoError and moves a
// handshake to FAILED for good; turns alternate, initiator first (out of turn is a
// UsageError that changes nothing); a write over 65535 bytes is refused before any
// state changes; split() works once; a failed decryption does not advance the nonce;
// nonce 2**64-1 is reserved for rekey.

import { chacha20poly1305 } from '../vendor/node_modules/@noble/ciphers/chacha.js';
import { x25519 } from '../vendor/node_modules/@noble/curves/ed25519.js';
import { blake2b } from '../vendor/node_modules/@noble/hashes/blake2.js';
import { hmac } from '../vendor/node_modules/@noble/hashes/hmac.js';
import { concat, equal, isBytes } from './bytes.js';
import { CryptoError, UsageError } from './errors.js';
import { isOneWay, parseProtocolName, pskCount, sends } from './noise_patterns.js';

export const DHLEN = 32;
export const HASHLEN = 64;
export const KEYLEN = 32;
export const TAGLEN = 16;
export const PSKLEN = 32;
export const MAX_MESSAGE_LEN = 65535;
export const MAX_NONCE = 2n ** 64n - 1n;

/** The platform's CSPRNG: rng(n) -> n random bytes. */
export function randomBytes(n) {
  const out = new Uint8Array(n);
  globalThis.crypto.getRandomValues(out);
  return out;
}

export class KeyPair {
  constructor(privateKey, publicKey) {
    if (!isBytes(privateKey) || privateKey.length !== DHLEN) {
      throw new UsageError(`X25519 private key must be ${DHLEN} bytes`);
    }
    if (!equal(x25519.getPublicKey(privateKey), publicKey)) {
      throw new UsageError('X25519 public key does not match the private key');
    }
    this.private = privateKey;
    this.public = publicKey;
  }

  static fromPrivate(privateKey) {
    if (!isBytes(privateKey) || privateKey.length !== DHLEN) {
      throw new UsageError(`X25519 private key must be ${DHLEN} bytes`);
    }
    return new KeyPair(privateKey, x25519.getPublicKey(privateKey));
  }

  static generate(rng = randomBytes) {
    return KeyPair.fromPrivate(rng(DHLEN));
  }
}

/** X25519; a low-order peer point (all-zero secret) is refused like any crypto failure. */
export function dh(keyPair, publicKey) {
  if (!isBytes(publicKey) || publicKey.length !== DHLEN) throw new CryptoError();
  let shared;
  try {
    shared = x25519.getSharedSecret(keyPair.private, publicKey);
  } catch {
    throw new CryptoError();
  }
  if (equal(shared, new Uint8Array(DHLEN))) throw new CryptoError();
  return shared;
}

function nonceBytes(n) {
  // Noise's ChaChaPoly nonce: 32 bits of zeros, then the counter as 64-bit little-endian.
  const out = new Uint8Array(12);
  new DataView(out.buffer).setBigUint64(4, BigInt(n), true);
  return out;
}

export function aeadEncrypt(key, n, ad, plaintext) {
  return chacha20poly1305(key, nonceBytes(n), ad).encrypt(plaintext);
}

export function aeadDecrypt(key, n, ad, ciphertext) {
  if (!isBytes(ciphertext) || ciphertext.length < TAGLEN) throw new CryptoError();
  try {
    return chacha20poly1305(key, nonceBytes(n), ad).decrypt(ciphertext);
  } catch {
    throw new CryptoError();
  }
}

export function hash(data) {
  return blake2b(data, { dkLen: HASHLEN });
}

const hmacHash = (key, data) => hmac(blake2b, key, data);

/** HKDF as Noise defines it (section 4.3): 2 or 3 outputs of HASHLEN bytes. */
export function hkdf(chainingKey, inputKeyMaterial, numOutputs) {
  if (![0, 32].includes(inputKeyMaterial.length)) {
    throw new UsageError('HKDF input key material must be 0 or 32 bytes');
  }
  const tempKey = hmacHash(chainingKey, inputKeyMaterial);
  const output1 = hmacHash(tempKey, Uint8Array.of(1));
  const output2 = hmacHash(tempKey, concat(output1, Uint8Array.of(2)));
  if (numOutputs === 2) return [output1, output2];
  return [output1, output2, hmacHash(tempKey, concat(output2, Uint8Array.of(3)))];
}

export class CipherState {
  #k = null;
  #n = 0n;

  constructor(key = null) {
    if (key !== null) this.initializeKey(key);
  }

  get nonce() {
    return this.#n;
  }

  initializeKey(key) {
    if (key !== null && (!isBytes(key) || key.length !== KEYLEN)) {
      throw new UsageError(`cipher key must be ${KEYLEN} bytes`);
    }
    this.#k = key;
    this.#n = 0n;
  }

  hasKey() {
    return this.#k !== null;
  }

  setNonce(nonce) {
    const n = BigInt(nonce);
    if (n < 0n || n > MAX_NONCE) throw new UsageError('nonce must fit in 64 bits');
    this.#n = n;
  }

  encryptWithAd(ad, plaintext) {
    if (this.#k === null) return plaintext;
    if (this.#n >= MAX_NONCE) throw new CryptoError();
    const ciphertext = aeadEncrypt(this.#k, this.#n, ad, plaintext);
    this.#n += 1n;
    return ciphertext;
  }

  decryptWithAd(ad, ciphertext) {
    if (this.#k === null) return ciphertext;
    if (this.#n >= MAX_NONCE) throw new CryptoError();
    const plaintext = aeadDecrypt(this.#k, this.#n, ad, ciphertext);
    this.#n += 1n;
    return plaintext;
  }

  /** REKEY(k): the first 32 bytes of ENCRYPT(k, 2**64-1, zerolen, zeros); nonce unchanged. */
  rekey() {
    if (this.#k === null) throw new UsageError('cannot rekey a cipher that has no key');
    this.#k = aeadEncrypt(this.#k, MAX_NONCE, new Uint8Array(0), new Uint8Array(KEYLEN)).slice(0, KEYLEN);
  }

  forget() {
    this.#k = null;
  }
}

export class SymmetricState {
  #cipher = new CipherState();
  #ck;
  #h;

  constructor(protocolName) {
    const name = new TextEncoder().encode(protocolName);
    if (name.length <= HASHLEN) {
      this.#h = new Uint8Array(HASHLEN);
      this.#h.set(name);
    } else {
      this.#h = hash(name);
    }
    this.#ck = this.#h;
  }

  hasKey() {
    return this.#cipher.hasKey();
  }

  mixKey(inputKeyMaterial) {
    const [ck, tempK] = hkdf(this.#ck, inputKeyMaterial, 2);
    this.#ck = ck;
    this.#cipher.initializeKey(tempK.slice(0, KEYLEN));
  }

  mixHash(data) {
    this.#h = hash(concat(this.#h, data));
  }

  mixKeyAndHash(inputKeyMaterial) {
    const [ck, tempH, tempK] = hkdf(this.#ck, inputKeyMaterial, 3);
    this.#ck = ck;
    this.mixHash(tempH);
    this.#cipher.initializeKey(tempK.slice(0, KEYLEN));
  }

  getHandshakeHash() {
    return this.#h;
  }

  encryptAndHash(plaintext) {
    const ciphertext = this.#cipher.encryptWithAd(this.#h, plaintext);
    this.mixHash(ciphertext);
    return ciphertext;
  }

  decryptAndHash(ciphertext) {
    const plaintext = this.#cipher.decryptWithAd(this.#h, ciphertext);
    this.mixHash(ciphertext);
    return plaintext;
  }

  /** [initiator-to-responder, responder-to-initiator] */
  split() {
    const [k1, k2] = hkdf(this.#ck, new Uint8Array(0), 2);
    return [new CipherState(k1.slice(0, KEYLEN)), new CipherState(k2.slice(0, KEYLEN))];
  }
}

const Phase = Object.freeze({
  HANDSHAKING: 'handshaking',
  COMPLETE: 'complete',
  SPLIT: 'split',
  FAILED: 'failed',
});

export class HandshakeState {
  #pattern;
  #initiator;
  #s;
  #e;
  #rs;
  #re = null;
  #psks;
  #rng;
  #phase = Phase.HANDSHAKING;
  #messageIndex = 0;
  #pskIndex = 0;
  #handshakeHash = null;
  #symmetric;

  constructor(protocolName, { initiator, prologue = new Uint8Array(0), s = null, e = null, rs = null, psks = [], rng = randomBytes }) {
    this.#pattern = parseProtocolName(protocolName);
    this.#initiator = Boolean(initiator);
    this.#s = s;
    this.#e = e; // a fixed ephemeral is for test vectors only
    this.#rs = rs;
    this.#psks = [...psks];
    this.#rng = rng;
    this.#checkKeys();
    this.#symmetric = new SymmetricState(protocolName);
    this.#symmetric.mixHash(prologue);
    // Pre-messages: the initiator's first, whichever side we are (spec 5.3).
    if (this.#pattern.initiatorPre.includes('s')) this.#symmetric.mixHash(this.#staticOf(true));
    if (this.#pattern.responderPre.includes('s')) this.#symmetric.mixHash(this.#staticOf(false));
  }

  #checkKeys() {
    const p = this.#pattern;
    const mine = this.#initiator ? p.initiatorPre : p.responderPre;
    const theirs = this.#initiator ? p.responderPre : p.initiatorPre;
    const myStaticDh = this.#initiator ? ['se', 'ss'] : ['es', 'ss'];
    const needsS = mine.includes('s') || sends(p, this.#initiator, 's') ||
      p.messages.some((tokens) => tokens.some((t) => myStaticDh.includes(t)));
    if (needsS && this.#s === null) throw new UsageError(`${p.name} needs this side's static key pair (s)`);
    if (theirs.includes('s') && this.#rs === null) throw new UsageError(`${p.name} needs the remote static public key (rs)`);
    if (!theirs.includes('s') && this.#rs !== null) throw new UsageError(`${p.name} sends the remote static key; do not pass rs`);
    if (this.#rs !== null && (!isBytes(this.#rs) || this.#rs.length !== DHLEN)) {
      throw new UsageError(`remote static key must be ${DHLEN} bytes`);
    }
    if (this.#psks.length !== pskCount(p)) throw new UsageError(`${p.name} needs ${pskCount(p)} psks, got ${this.#psks.length}`);
    if (this.#psks.some((psk) => !isBytes(psk) || psk.length !== PSKLEN)) throw new UsageError(`each psk must be ${PSKLEN} bytes`);
  }

  #staticOf(initiatorSide) {
    return initiatorSide === this.#initiator ? this.#s.public : this.#rs;
  }

  get pattern() {
    return this.#pattern;
  }

  get initiator() {
    return this.#initiator;
  }

  get isComplete() {
    return this.#phase === Phase.COMPLETE || this.#phase === Phase.SPLIT;
  }

  get isMyTurn() {
    if (this.#phase !== Phase.HANDSHAKING) return false;
    return (this.#messageIndex % 2 === 0) === this.#initiator;
  }

  /** The final h, for channel binding; only once the handshake is complete. */
  get handshakeHash() {
    this.#requireAlive();
    if (!this.isComplete) throw new UsageError('handshake hash is only final once the handshake is complete');
    return this.#handshakeHash;
  }

  /** The peer's static key once known; authenticated only when isComplete. */
  get remoteStatic() {
    this.#requireAlive();
    return this.#rs;
  }

  writeMessage(payload = new Uint8Array(0)) {
    if (!isBytes(payload)) throw new UsageError('payload must be a Uint8Array');
    const tokens = this.#beginTurn(true);
    const size = this.#writtenSize(tokens, payload.length);
    if (size > MAX_MESSAGE_LEN) throw new UsageError(`handshake message would be ${size} bytes; the limit is 65535`);
    const parts = [];
    try {
      for (const token of tokens) {
        if (token === 'e') {
          if (this.#e === null) this.#e = KeyPair.generate(this.#rng);
          parts.push(this.#e.public);
          this.#mixEphemeral(this.#e.public);
        } else if (token === 's') {
          parts.push(this.#symmetric.encryptAndHash(this.#s.public));
        } else {
          this.#mixSecret(token);
        }
      }
      parts.push(this.#symmetric.encryptAndHash(payload));
    } catch (error) {
      if (error instanceof CryptoError) this.#fail();
      throw error;
    }
    this.#endTurn();
    return concat(...parts);
  }

  readMessage(message) {
    if (!isBytes(message)) throw new UsageError('message must be a Uint8Array');
    const tokens = this.#beginTurn(false);
    let payload;
    try {
      if (message.length > MAX_MESSAGE_LEN) throw new CryptoError();
      let rest = message;
      for (const token of tokens) {
        if (token === 'e') {
          if (rest.length < DHLEN) throw new CryptoError();
          this.#re = rest.slice(0, DHLEN);
          rest = rest.subarray(DHLEN);
          this.#mixEphemeral(this.#re);
        } else if (token === 's') {
          const size = this.#symmetric.hasKey() ? DHLEN + TAGLEN : DHLEN;
          if (rest.length < size) throw new CryptoError();
          this.#rs = this.#symmetric.decryptAndHash(rest.slice(0, size));
          rest = rest.subarray(size);
        } else {
          this.#mixSecret(token);
        }
      }
      payload = this.#symmetric.decryptAndHash(rest.slice());
    } catch (error) {
      if (error instanceof CryptoError) this.#fail();
      throw error;
    }
    this.#endTurn();
    return payload;
  }

  /** The transport ciphers as [send, receive] from this side's point of view; once. */
  split() {
    this.#requireAlive();
    if (this.#phase === Phase.SPLIT) throw new UsageError("split() was already called; its ciphers must not be duplicated");
    if (this.#phase !== Phase.COMPLETE) throw new UsageError('cannot split before the handshake is complete');
    const [i2r, r2i] = this.#symmetric.split();
    this.#phase = Phase.SPLIT;
    this.#e = null; // forward secrecy: the ephemeral is no longer needed
    return this.#initiator ? [i2r, r2i] : [r2i, i2r];
  }

  #requireAlive() {
    if (this.#phase === Phase.FAILED) throw new CryptoError();
  }

  #fail() {
    this.#phase = Phase.FAILED;
    this.#e = null;
    this.#re = null;
  }

  #beginTurn(writing) {
    this.#requireAlive();
    if (this.#phase !== Phase.HANDSHAKING) throw new UsageError('the handshake is already complete');
    if (this.isMyTurn !== writing) {
      throw new UsageError(writing ? "not this side's turn to write" : "not this side's turn to read");
    }
    return this.#pattern.messages[this.#messageIndex];
  }

  #endTurn() {
    this.#messageIndex += 1;
    if (this.#messageIndex === this.#pattern.messages.length) {
      this.#phase = Phase.COMPLETE;
      this.#handshakeHash = this.#symmetric.getHandshakeHash();
    }
  }

  #writtenSize(tokens, payloadLength) {
    // Whether a tag is added depends on whether a key exists at that point.
    let keyed = this.#symmetric.hasKey();
    let size = 0;
    for (const token of tokens) {
      if (token === 'e') {
        size += DHLEN;
        keyed = keyed || pskCount(this.#pattern) > 0;
      } else if (token === 's') {
        size += DHLEN + (keyed ? TAGLEN : 0);
      } else {
        keyed = true;
      }
    }
    return size + payloadLength + (keyed ? TAGLEN : 0);
  }

  #mixEphemeral(publicKey) {
    this.#symmetric.mixHash(publicKey);
    // In psk handshakes "e" also feeds the key, so a psk can protect it (spec 9.2).
    if (pskCount(this.#pattern) > 0) this.#symmetric.mixKey(publicKey);
  }

  #mixSecret(token) {
    if (token === 'psk') {
      this.#symmetric.mixKeyAndHash(this.#psks[this.#pskIndex]);
      this.#pskIndex += 1;
      return;
    }
    // The first letter names the initiator's key, the second the responder's.
    const [mine, theirs] = this.#initiator ? [token[0], token[1]] : [token[1], token[0]];
    const local = mine === 'e' ? this.#e : this.#s;
    const remote = theirs === 'e' ? this.#re : this.#rs;
    if (local === null || remote === null) throw new UsageError(`token ${token} before the keys it needs are known`);
    this.#symmetric.mixKey(dh(local, remote));
  }
}

export { isOneWay };
