// Fingerprints and comparison codes, mirroring starmux/fingerprint.py.
//
//   fingerprintBytes(signPublic) -> 20 bytes     fingerprint(signPublic) -> 'K7Q2-M4XD-...'
//   normalizeFingerprint(text) -> canonical      fingerprintFromText(text) -> 20 bytes
//   fingerprintsMatch(a, b)                      comparisonCode(handshakeHash) -> '042-917'

import { blake2b } from '../vendor/node_modules/@noble/hashes/blake2.js';
import { equal, utf8 } from './bytes.js';
import { UsageError } from './errors.js';

export const FINGERPRINT_BYTES = 20;
export const FINGERPRINT_DOMAIN = 'starmux/fingerprint/v1';
export const COMPARISON_DOMAIN = 'starmux/comparison-code/v1';
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

// BLAKE2b keyed by the domain keeps fingerprints and comparison codes apart.
const keyedHash = (domain, data, size) => blake2b(data, { key: utf8(domain), dkLen: size });

export function fingerprintBytes(signPublic) {
  if (!(signPublic instanceof Uint8Array) || signPublic.length !== 32) throw new UsageError('a signing public key is 32 bytes');
  return keyedHash(FINGERPRINT_DOMAIN, signPublic, FINGERPRINT_BYTES);
}

function base32(data) {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of data) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(value >> bits) & 31];
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

const group = (text) => text.match(/.{1,4}/g).join('-');

export function formatFingerprint(raw) {
  return group(base32(raw));
}

export function fingerprint(signPublic) {
  return formatFingerprint(fingerprintBytes(signPublic));
}

/** Canonical form of a typed or scanned fingerprint (case, spaces and dashes forgiven). */
export function normalizeFingerprint(text) {
  // ASCII first: toUpperCase maps some non-ASCII letters (ß, ſ) into the alphabet.
  const compact = /^[\x00-\x7f]*$/.test(text) ? text.toUpperCase().replace(/[- ]/g, '') : '';
  if (compact.length !== 32 || [...compact].some((ch) => !ALPHABET.includes(ch))) {
    throw new UsageError(`not a fingerprint: ${JSON.stringify(text.slice(0, 60))}`, {
      hint: 'a fingerprint is 32 base32 characters, e.g. K7Q2-M4XD-... (8 groups of 4)',
    });
  }
  return group(compact);
}

export function fingerprintFromText(text) {
  const compact = normalizeFingerprint(text).replace(/-/g, '');
  const out = new Uint8Array(FINGERPRINT_BYTES);
  let bits = 0;
  let value = 0;
  let index = 0;
  for (const ch of compact) {
    value = (value << 5) | ALPHABET.indexOf(ch);
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out[index++] = (value >> bits) & 0xff;
    }
  }
  return out;
}

export function fingerprintsMatch(a, b) {
  return equal(utf8(normalizeFingerprint(a)), utf8(normalizeFingerprint(b)));
}

export function comparisonCode(handshakeHash) {
  const digest = keyedHash(COMPARISON_DOMAIN, handshakeHash, 8);
  const number = new DataView(digest.buffer, digest.byteOffset).getBigUint64(0) % 1000000n;
  const text = number.toString().padStart(6, '0');
  return `${text.slice(0, 3)}-${text.slice(3)}`;
}
