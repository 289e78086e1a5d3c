// Length padding inside the live channel, mirroring starmux/padding.py:
// length (2 bytes BE) || plaintext || zeros, to at least 256 bytes, then the Padmé
// bucket, at most MAX_PADDED. unpad accepts exactly what pad makes (CryptoError else).
//
//   padme(n), paddedSize(n), pad(bytes), unpad(bytes), MIN_PADDED, MAX_PADDED, MAX_UNPADDED

import { CryptoError, UsageError } from './errors.js';
import { MAX_BODY_SIZE } from './frames.js';
import { TAGLEN } from './noise.js';

export const MIN_PADDED = 256;
export const MAX_PADDED = MAX_BODY_SIZE - 1 - TAGLEN;
const LENGTH_BYTES = 2;
export const MAX_UNPADDED = MAX_PADDED - LENGTH_BYTES;

const bitLength = (n) => (n === 0 ? 0 : 32 - Math.clz32(n));

export function padme(length) {
  if (length < 2) return length;
  const exponent = bitLength(length) - 1;
  const keptBits = bitLength(exponent);
  const mask = 2 ** (exponent - keptBits) - 1;
  return (length + mask) & ~mask;
}

export function paddedSize(length) {
  return Math.min(MAX_PADDED, Math.max(MIN_PADDED, padme(length + LENGTH_BYTES)));
}

export function pad(plaintext) {
  const size = plaintext.length;
  if (size > MAX_UNPADDED) throw new UsageError(`plaintext is ${size} bytes; the limit is ${MAX_UNPADDED}`);
  const out = new Uint8Array(paddedSize(size));
  out[0] = size >> 8;
  out[1] = size & 0xff;
  out.set(plaintext, LENGTH_BYTES);
  return out;
}

export function unpad(padded) {
  if (padded.length < MIN_PADDED) throw new CryptoError();
  const size = (padded[0] << 8) | padded[1];
  const end = LENGTH_BYTES + size;
  if (size > MAX_UNPADDED || padded.length !== paddedSize(size)) throw new CryptoError();
  let nonzero = 0;
  for (let i = end; i < padded.length; i++) nonzero |= padded[i];
  if (nonzero !== 0) throw new CryptoError();
  return padded.slice(LENGTH_BYTES, end);
}
