// Byte helpers shared by the protocol modules: Uint8Array only, no DOM, no Node Buffer.
//
//   concat(...arrays) -> Uint8Array        equal(a, b) -> bool (constant time in content)
//   utf8(text) / fromUtf8(bytes, fatal)    toHex / fromHex
//   b64url(bytes) / fromB64url(text)       u32be(n), u64be(bigint|number)
//   isBytes(x)                             bytes(x): check and return a Uint8Array

import { UsageError } from './errors.js';

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function isBytes(value) {
  return value instanceof Uint8Array;
}

export function bytes(value, what = 'value', size = undefined) {
  if (!isBytes(value)) throw new UsageError(`${what} must be a Uint8Array`);
  if (size !== undefined && value.length !== size) {
    throw new UsageError(`${what} must be ${size} bytes`);
  }
  return value;
}

export function concat(...arrays) {
  let total = 0;
  for (const array of arrays) total += array.length;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const array of arrays) {
    out.set(array, offset);
    offset += array.length;
  }
  return out;
}

/** Equal length and content; the time depends only on the length (secrets, hashes). */
export function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function utf8(text) {
  return encoder.encode(text);
}

/** Strict UTF-8: invalid bytes throw a TypeError (like Python's decode). */
export function fromUtf8(data) {
  return strictDecoder.decode(data);
}

export function toHex(data) {
  let out = '';
  for (const byte of data) out += byte.toString(16).padStart(2, '0');
  return out;
}

export function fromHex(text) {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) {
    throw new UsageError('not hex');
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** base64url without padding (RFC 4648 section 5). */
export function b64url(data) {
  let out = '';
  for (let i = 0; i < data.length; i += 3) {
    const n = (data[i] << 16) | ((data[i + 1] ?? 0) << 8) | (data[i + 2] ?? 0);
    const chars = [18, 12, 6, 0].map((shift) => B64URL[(n >> shift) & 63]);
    out += chars.slice(0, Math.min(4, data.length - i + 1)).join('');
  }
  return out;
}

/** Inverse of b64url; null when `text` is not canonical unpadded base64url. */
export function fromB64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let value = 0;
  let index = 0;
  for (const ch of text) {
    value = (value << 6) | B64URL.indexOf(ch);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[index++] = (value >> bits) & 0xff;
    }
  }
  return out;
}

export function u32be(n) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n);
  return out;
}

/** 8 bytes big-endian, signed; `n` a safe integer or a BigInt. */
export function i64be(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigInt64(0, BigInt(n));
  return out;
}
