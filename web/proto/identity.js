// Node identities, mirroring starmux/identity.py: an Ed25519 signing key (the identity),
// an X25519 static key (for Noise), and a card binding them, signed by the signing key.
//
//   NodeKeys.generate(rng) / new NodeKeys(signingSeed, dhPrivate)
//       .signPublic .dhPublic .fingerprint .sign(message) .card(role, name) -> card
//   decodeCard(bytes) -> card (verified; RemoteProtocolError malformed, CryptoError bad sig)
//   card: {role, signPublic, dhPublic, name, signature, encoded, fingerprint}
//   verifySignature(signPublic, message, signature)   throws CryptoError, never says why
//   Role: {MACHINE, CONTROLLER, RELAY}
//
// Ed25519 verification is RFC 8032 strict (zip215: false), like libsodium's.

import { ed25519, x25519 } from '../vendor/node_modules/@noble/curves/ed25519.js';
import { utf8 } from './bytes.js';
import { CryptoError, RemoteProtocolError, UsageError } from './errors.js';
import { fingerprint } from './fingerprint.js';
import { pack, unpack } from './msgpack.js';
import { randomBytes } from './noise.js';
import { transcript } from './transcript.js';

export const CARD_DOMAIN = 'starmux/identity-card/v1';
export const CARD_VERSION = 1;
export const MAX_NAME_LENGTH = 64;
export const MAX_CARD_BYTES = 512;
export const Role = Object.freeze({ MACHINE: 'machine', CONTROLLER: 'controller', RELAY: 'relay' });
const ROLES = new Set(Object.values(Role));

// Python's str.isprintable(): no character of these categories, the ASCII space aside.
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

export function checkName(name) {
  const length = [...name].length;
  if (!name || length > MAX_NAME_LENGTH || NOT_PRINTABLE.test(name.replaceAll(' ', 'x'))) {
    throw new UsageError(`invalid node name ${JSON.stringify(name.slice(0, 80))}`, {
      hint: `use 1 to ${MAX_NAME_LENGTH} printable characters`,
    });
  }
  return name;
}

export function verifySignature(signPublic, message, signature) {
  if (signPublic?.length !== 32 || signature?.length !== 64) throw new CryptoError();
  let ok = false;
  try {
    ok = ed25519.verify(signature, message, signPublic, { zip215: false });
  } catch {
    ok = false;
  }
  if (!ok) throw new CryptoError();
}

function cardSignedBytes(role, signPublic, dhPublic, name) {
  return transcript(CARD_DOMAIN, utf8(role), signPublic, dhPublic, utf8(name));
}

function makeCard(role, signPublic, dhPublic, name, signature) {
  const encoded = pack([CARD_VERSION, role, signPublic, dhPublic, name, signature]);
  return Object.freeze({ role, signPublic, dhPublic, name, signature, encoded, fingerprint: fingerprint(signPublic) });
}

export class NodeKeys {
  #signingSeed;
  #dhPrivate;

  constructor(signingSeed, dhPrivate) {
    if (signingSeed?.length !== 32 || dhPrivate?.length !== 32) throw new UsageError('node keys are two 32-byte secrets');
    this.#signingSeed = signingSeed;
    this.#dhPrivate = dhPrivate;
    this.signPublic = ed25519.getPublicKey(signingSeed);
    this.dhPublic = x25519.getPublicKey(dhPrivate);
  }

  static generate(rng = randomBytes) {
    return new NodeKeys(rng(32), rng(32));
  }

  /** The two secrets, for the caller's key store (IndexedDB, wrapped). */
  exportSecrets() {
    return { signingSeed: this.#signingSeed, dhPrivate: this.#dhPrivate };
  }

  get dhPrivate() {
    return this.#dhPrivate;
  }

  get fingerprint() {
    return fingerprint(this.signPublic);
  }

  sign(message) {
    return ed25519.sign(message, this.#signingSeed);
  }

  card(role, name) {
    if (!ROLES.has(role)) throw new UsageError(`unknown role ${role}`);
    checkName(name);
    const signature = this.sign(cardSignedBytes(role, this.signPublic, this.dhPublic, name));
    return makeCard(role, this.signPublic, this.dhPublic, name, signature);
  }
}

export function decodeCard(data) {
  if (!(data instanceof Uint8Array) || data.length > MAX_CARD_BYTES) {
    throw new RemoteProtocolError('identity card too large or not bytes');
  }
  let fields;
  try {
    fields = unpack(data);
  } catch {
    throw new RemoteProtocolError('identity card is not valid msgpack');
  }
  if (!Array.isArray(fields) || fields.length !== 6 || fields[0] !== CARD_VERSION) {
    throw new RemoteProtocolError('identity card has the wrong shape or version');
  }
  const [, role, signPublic, dhPublic, name, signature] = fields;
  const bin = (value, size) => value instanceof Uint8Array && value.length === size;
  if (typeof role !== 'string' || !ROLES.has(role) || !bin(signPublic, 32) || !bin(dhPublic, 32) ||
      typeof name !== 'string' || !bin(signature, 64)) {
    throw new RemoteProtocolError('identity card has invalid fields');
  }
  try {
    checkName(name);
  } catch {
    throw new RemoteProtocolError('identity card has an invalid name');
  }
  verifySignature(signPublic, cardSignedBytes(role, signPublic, dhPublic, name), signature);
  return makeCard(role, signPublic, dhPublic, name, signature);
}
