// Opening a Web Push, mirroring starmux/notify_push.py::open_notification (PROTOCOL.md
// section 10.2). The browser has already removed the outer RFC 8291 layer; what is left
// is the machine's sealed box:
//
//   sealed = crypto_box_seal(padded, device_dh_pk)          SEALED_SIZE bytes
//   padded = len(signed) (u16 BE) || signed || zeros          PADDED_SIZE bytes
//   signed = APP signed-push {note, signature}
//
//   openPush(sealed, {dhPrivate, dhPublic, deviceKey, isPaired}) -> push-note fields
//       (throws CryptoError for anything wrong: size, not for us, padding, unknown
//       machine, signature; never says which)
//   subscriptionTranscript(relayKey, deviceKey, endpoint, p256dh, auth, issuedAt)
//
// X25519 and Ed25519 come from WebCrypto here, not @noble/curves: this module runs in the
// service worker, and noble's curves import '@noble/hashes/...' by bare name, which only
// an import map resolves; workers have no import maps. XSalsa20-Poly1305 and BLAKE2b
// (no WebCrypto equivalent) are noble's, imported by relative path.

import { hsalsa, xsalsa20poly1305 } from '../vendor/node_modules/@noble/ciphers/salsa.js';
import { blake2b } from '../vendor/node_modules/@noble/hashes/blake2.js';
import { concat, utf8 } from './bytes.js';
import { APP } from './codec.js';
import { CryptoError, MessageError } from './errors.js';
import { signedTime, transcript } from './transcript.js';

export const PUSH_DOMAIN = 'starmux/push-notification/v1';
export const SUBSCRIPTION_DOMAIN = 'starmux/push-subscription/v1';
export const PADDED_SIZE = 1024;
export const SEALED_SIZE = PADDED_SIZE + 48; // ephemeral key 32 + Poly1305 tag 16

const NOT_OURS = () => new CryptoError('not a starmux push');
const SIGMA = new Uint32Array([0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]); // "expand 32-byte k"
// PKCS #8 wrappers of a raw 32-byte X25519 private key / Ed25519 seed (RFC 8410).
const X25519_PKCS8 = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);
const ED25519_PKCS8 = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);

async function x25519(privateKey, publicKey) {
  const subtle = globalThis.crypto.subtle;
  const mine = await subtle.importKey('pkcs8', concat(X25519_PKCS8, privateKey), { name: 'X25519' }, false, ['deriveBits']);
  const theirs = await subtle.importKey('raw', publicKey, { name: 'X25519' }, false, []);
  return new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: theirs }, mine, 256));
}

// crypto_box_beforenm: HSalsa20 of the X25519 secret with a zero nonce. The Uint32Array
// views assume a little-endian host (every browser engine runs on one).
function boxKey(shared) {
  const out = new Uint32Array(8);
  hsalsa(SIGMA, new Uint32Array(shared.slice().buffer), new Uint32Array(4), out);
  return new Uint8Array(out.buffer);
}

// libsodium crypto_box_seal_open.
async function sealOpen(sealed, dhPrivate, dhPublic) {
  const ephemeral = sealed.subarray(0, 32);
  const nonce = blake2b(concat(ephemeral, dhPublic), { dkLen: 24 });
  let shared;
  try {
    shared = await x25519(dhPrivate, ephemeral);
  } catch {
    throw NOT_OURS(); // a low-order ephemeral key: WebCrypto refuses the all-zero secret
  }
  try {
    return xsalsa20poly1305(boxKey(shared), nonce).decrypt(sealed.subarray(32));
  } catch {
    throw NOT_OURS();
  }
}

export async function verifyEd25519(publicKey, message, signature) {
  const subtle = globalThis.crypto.subtle;
  let ok = false;
  try {
    const key = await subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
    ok = await subtle.verify({ name: 'Ed25519' }, key, signature, message);
  } catch {
    ok = false;
  }
  if (!ok) throw NOT_OURS();
}

// An Ed25519 signer over WebCrypto, for code that cannot load @noble/curves (the
// service worker): {sign(message) -> Promise<signature>}.
export async function webCryptoSigner(seed) {
  const key = await globalThis.crypto.subtle.importKey('pkcs8', concat(ED25519_PKCS8, seed), { name: 'Ed25519' }, false, ['sign']);
  return { sign: async (message) => new Uint8Array(await globalThis.crypto.subtle.sign({ name: 'Ed25519' }, key, message)) };
}

export async function openPush(sealed, { dhPrivate, dhPublic, deviceKey, isPaired }) {
  if (!(sealed instanceof Uint8Array) || sealed.length !== SEALED_SIZE) throw NOT_OURS();
  const padded = await sealOpen(sealed, dhPrivate, dhPublic);
  const length = (padded[0] << 8) | padded[1];
  if (2 + length > padded.length || padded.subarray(2 + length).some((b) => b !== 0)) throw NOT_OURS();
  let signed;
  let note;
  try {
    signed = APP.decodeAs(padded.slice(2, 2 + length), 'signed-push');
    note = APP.decodeAs(signed.note, 'push-note');
  } catch (error) {
    if (error instanceof MessageError) throw NOT_OURS();
    throw error;
  }
  if (!isPaired(note.machine)) throw NOT_OURS();
  await verifyEd25519(note.machine, transcript(PUSH_DOMAIN, deviceKey, signed.note), signed.signature);
  return note;
}

export const subscriptionTranscript = (relayKey, deviceKey, endpoint, p256dh, auth, issuedAt) =>
  transcript(SUBSCRIPTION_DOMAIN, relayKey, deviceKey, utf8(endpoint), p256dh, auth, signedTime(issuedAt));
