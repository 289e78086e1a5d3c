// msgpack with Python's (msgpack-python's) strictness, on the vendored @msgpack/msgpack.
//
//   pack(value) -> Uint8Array      unpack(bytes) -> value (throws on anything odd)
//   new Float64(x): encode x as a msgpack float 64 even when it is integral
//   WireFloat: what unpack returns for a msgpack float (so 1.0 is not mistaken for 1)
//
// Why subclasses: JavaScript has one number type, and the protocol does not (a float
// field may carry 1700000000.0, an int field must not carry 1.0). So floats decode to
// WireFloat and encode from Float64; 64-bit ints decode to BigInt (to Number when safe).
// Refused as Python refuses them: ext types (max_ext_len=0), invalid UTF-8, map keys
// that are not strings (strict_map_key; bytes keys never name a field either), and
// trailing bytes. Maps decode to plain objects; a Map encodes in its own order.

import { DecodeError, Decoder, Encoder } from '../vendor/node_modules/@msgpack/msgpack/dist.esm/index.mjs';

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export class WireFloat {
  constructor(value) {
    this.value = value;
  }
}

export class Float64 {
  constructor(value) {
    this.value = value;
  }
}

class StrictDecoder extends Decoder {
  readF32() {
    return new WireFloat(super.readF32());
  }

  readF64() {
    return new WireFloat(super.readF64());
  }

  decodeExtension() {
    throw new DecodeError('msgpack ext types are not allowed');
  }

  decodeUtf8String(byteLength, headerOffset) {
    const start = this.pos + headerOffset;
    const text = super.decodeUtf8String(byteLength, headerOffset);
    fatalUtf8.decode(this.bytes.subarray(start, start + byteLength)); // throws on bad UTF-8
    return text;
  }

  decodeBinary(byteLength, headOffset) {
    return super.decodeBinary(byteLength, headOffset).slice(); // own the bytes
  }
}

class StrictEncoder extends Encoder {
  doEncode(object, depth) {
    if (object instanceof Float64) {
      this.encodeNumberAsFloat(object.value);
    } else if (typeof object === 'bigint') {
      this.encodeBigInt64(object);
    } else if (object instanceof Map) {
      this.#encodeMapInOrder(object, depth);
    } else {
      super.doEncode(object, depth);
    }
  }

  #encodeMapInOrder(map, depth) {
    const size = map.size;
    if (size < 16) this.writeU8(0x80 + size);
    else if (size < 0x10000) {
      this.writeU8(0xde);
      this.writeU16(size);
    } else {
      this.writeU8(0xdf);
      this.writeU32(size);
    }
    for (const [key, value] of map) {
      this.doEncode(key, depth + 1);
      this.doEncode(value, depth + 1);
    }
  }
}

const keyIsString = (key) => {
  if (typeof key !== 'string') throw new DecodeError('map keys must be strings');
  return key;
};

function normaliseInts(value) {
  // 64-bit ints arrive as BigInt; keep BigInt only where a Number would lose digits.
  if (typeof value === 'bigint') {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(value)
      : value;
  }
  if (Array.isArray(value)) return value.map(normaliseInts);
  if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const key of Object.keys(value)) value[key] = normaliseInts(value[key]);
  }
  return value;
}

export function pack(value) {
  return new StrictEncoder({ useBigInt64: false }).encode(value);
}

/** Decode untrusted bytes; throws (DecodeError, RangeError, TypeError) on anything odd. */
export function unpack(data) {
  const decoder = new StrictDecoder({ useBigInt64: true, mapKeyConverter: keyIsString });
  return normaliseInts(decoder.decode(data));
}

export function isPlainObject(value) {
  return value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype;
}
