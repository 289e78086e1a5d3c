// Pairing codes (daemon QR), link and join codes (device QR), parse and format,
// mirroring starmux/pairing_code.py and starmux/link_code.py.
//
//   parsePairingCode(text) -> {relayUrl, relayFingerprint, ticket, machineFingerprint, secret, expiresAt}
//   formatPairingCode(code) -> 'starmux://pair/v1?relay=…&rfp=…&ticket=…&mfp=…&secret=…[&exp=…]'
//   parseLinkCode(text) -> {relayUrl, relayFingerprint, ticket, inviterFingerprint, secret, role}
//   formatLinkCode(code) -> 'starmux://link/v1?relay=…&rfp=…&ticket=…&ifp=…&secret=…&role=…'
//   parseJoinCode(text) -> {relayUrl, relayFingerprint, ticket, deviceFingerprint, secret}
//   formatJoinCode(code) -> 'starmux://join/v1?relay=…&rfp=…&ticket=…&dfp=…&secret=…'
//   checkRelayUrl(url)
//
// Strict: every refusal is a PairingCodeError naming the part that is wrong, because
// people paste these from terminals, chats and screenshots. The secret never reaches
// the relay; do not log a code.

import { b64url, fromB64url } from './bytes.js';
import { PairingCodeError, UsageError } from './errors.js';
import { normalizeFingerprint } from './fingerprint.js';

export const PAIR_PREFIX = 'starmux://pair/v1?';
export const LINK_PREFIX = 'starmux://link/v1?';
export const JOIN_PREFIX = 'starmux://join/v1?';
export const TICKET_SIZE = 16;
export const SECRET_SIZE = 32;
export const MAX_CODE_LENGTH = 1024;
export const MAX_RELAY_URL = 256;
const PAIR_PARAMS = ['relay', 'rfp', 'ticket', 'mfp', 'secret'];
const LINK_PARAMS = ['relay', 'rfp', 'ticket', 'ifp', 'secret', 'role'];
const JOIN_PARAMS = ['relay', 'rfp', 'ticket', 'dfp', 'secret'];
const ROLES = ['owner', 'operator', 'viewer'];
const PAIR_HINT = 'copy the whole code the daemon printed, starting with starmux://pair/v1?';

export function checkRelayUrl(url) {
  if (typeof url !== 'string' || url.length > MAX_RELAY_URL || !/^[\x21-\x7e]*$/.test(url)) {
    throw new UsageError(`the relay URL must be printable ASCII without spaces, at most ${MAX_RELAY_URL} characters`,
      { hint: 'use ws://HOST:PORT or wss://HOST[:PORT]' });
  }
  let parts;
  try {
    parts = new URL(url);
  } catch {
    throw new UsageError('invalid relay URL', { hint: 'use ws://HOST:PORT or wss://HOST[:PORT]' });
  }
  if (!['ws:', 'wss:'].includes(parts.protocol) || !parts.hostname) {
    throw new UsageError('invalid relay URL', { hint: 'use ws://HOST:PORT or wss://HOST[:PORT]' });
  }
  if (parts.username || parts.password) throw new UsageError('the relay URL must not carry credentials (user:password@)');
  if (url.includes('?') || url.includes('#')) throw new UsageError('the relay URL must not carry a query or fragment');
  return url;
}

function unb64(text, size, what, hint) {
  const raw = text ? fromB64url(text) : null;
  if (raw === null) throw new PairingCodeError(`the ${what} in the code is not base64url`, { hint });
  if (raw.length !== size) throw new PairingCodeError(`the ${what} in the code is ${raw.length} bytes, expected ${size}`, { hint });
  return raw;
}

// application/x-www-form-urlencoded with Python's urlencode(safe=':/') spelling.
function encodeValue(value) {
  return encodeURIComponent(value).replace(/%3A/gi, ':').replace(/%2F/gi, '/').replace(/%20/g, '+')
    .replace(/[!'()*]/g, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`);
}

function query(params) {
  return Object.entries(params).map(([k, v]) => `${k}=${encodeValue(v)}`).join('&');
}

/** Python's parse_qsl(strict_parsing=True, keep_blank_values=True); null when garbled. */
function parsePairs(text, maxFields) {
  const pieces = text.split(/[&]/);
  if (pieces.length > maxFields) return null;
  const pairs = [];
  for (const piece of pieces) {
    const at = piece.indexOf('=');
    if (at < 0) return null;
    try {
      const decode = (s) => decodeURIComponent(s.replace(/\+/g, ' '));
      pairs.push([decode(piece.slice(0, at)), decode(piece.slice(at + 1))]);
    } catch {
      return null;
    }
  }
  return pairs;
}

export function formatPairingCode(code) {
  const params = {
    relay: checkRelayUrl(code.relayUrl),
    rfp: normalizeFingerprint(code.relayFingerprint).replaceAll('-', ''),
    ticket: b64url(code.ticket),
    mfp: normalizeFingerprint(code.machineFingerprint).replaceAll('-', ''),
    secret: b64url(code.secret),
  };
  if (code.expiresAt !== null && code.expiresAt !== undefined) params.exp = String(Math.trunc(code.expiresAt));
  return PAIR_PREFIX + query(params);
}

export function parsePairingCode(input) {
  if (typeof input !== 'string') throw new PairingCodeError('a pairing code is text', { hint: PAIR_HINT });
  const text = input.trim();
  if (text.length > MAX_CODE_LENGTH) throw new PairingCodeError(`a pairing code is under ${MAX_CODE_LENGTH} characters`, { hint: PAIR_HINT });
  if (!text.startsWith(PAIR_PREFIX)) {
    if (text.startsWith('starmux://pair/')) {
      throw new PairingCodeError('this pairing code is from another starmux version',
        { hint: 'update starmux on this controller or on the machine so both match' });
    }
    throw new PairingCodeError('this is not a starmux pairing code', { hint: PAIR_HINT });
  }
  const pairs = parsePairs(text.slice(PAIR_PREFIX.length), 2 * (PAIR_PARAMS.length + 1));
  if (pairs === null) throw new PairingCodeError("the pairing code's parameters are garbled", { hint: PAIR_HINT });
  const params = {};
  for (const [key, value] of pairs) {
    if (!PAIR_PARAMS.includes(key) && key !== 'exp') throw new PairingCodeError(`the pairing code has an unknown part ${JSON.stringify(key.slice(0, 20))}`, { hint: PAIR_HINT });
    if (Object.hasOwn(params, key)) throw new PairingCodeError(`the pairing code repeats ${key}`, { hint: PAIR_HINT });
    params[key] = value;
  }
  const missing = PAIR_PARAMS.filter((key) => !Object.hasOwn(params, key));
  if (missing.length) throw new PairingCodeError(`the pairing code lacks ${missing.join(', ')} (was it cut off?)`, { hint: PAIR_HINT });
  let relayUrl;
  try {
    relayUrl = checkRelayUrl(params.relay);
  } catch (error) {
    throw new PairingCodeError(`the pairing code's relay URL is invalid: ${error.message}`, { hint: PAIR_HINT });
  }
  const fp = (key, what) => {
    try {
      return normalizeFingerprint(params[key]);
    } catch {
      throw new PairingCodeError(`the ${what} in the pairing code is malformed`, { hint: PAIR_HINT });
    }
  };
  let expiresAt = null;
  if (Object.hasOwn(params, 'exp')) {
    if (!/^[0-9]{1,12}$/.test(params.exp)) throw new PairingCodeError("the pairing code's expiry is malformed", { hint: PAIR_HINT });
    expiresAt = Number(params.exp);
  }
  return Object.freeze({
    relayUrl,
    relayFingerprint: fp('rfp', 'relay fingerprint'),
    ticket: unb64(params.ticket, TICKET_SIZE, 'ticket', PAIR_HINT),
    machineFingerprint: fp('mfp', 'machine fingerprint'),
    secret: unb64(params.secret, SECRET_SIZE, 'secret', PAIR_HINT),
    expiresAt,
  });
}

// The two device-code directions, as starmux/link_code.py's FORMS: an invite (an owner
// shows it, the new device reads it) and a join (the new device shows it, an owner
// reads it). `shower` is the field naming the fingerprint of the device showing it.
const FORMS = {
  invite: { prefix: LINK_PREFIX, params: LINK_PARAMS, fpParam: 'ifp', shower: 'inviterFingerprint',
    shownBy: 'starmux devices link', readBy: 'starmux link CODE', what: 'link code' },
  join: { prefix: JOIN_PREFIX, params: JOIN_PARAMS, fpParam: 'dfp', shower: 'deviceFingerprint',
    shownBy: 'starmux link --show', readBy: 'starmux devices add CODE', what: 'join code' },
};

function formatDeviceCode(form, code) {
  const params = {
    relay: checkRelayUrl(code.relayUrl),
    rfp: normalizeFingerprint(code.relayFingerprint).replaceAll('-', ''),
    ticket: b64url(code.ticket),
    [form.fpParam]: normalizeFingerprint(code[form.shower]).replaceAll('-', ''),
    secret: b64url(code.secret),
  };
  if (form === FORMS.invite) {
    if (!ROLES.includes(code.role)) throw new UsageError(`unknown role ${code.role}`);
    params.role = code.role;
  }
  return form.prefix + query(params);
}

function parseDeviceCode(form, input) {
  const text = typeof input === 'string' ? input.trim() : '';
  const hint = `copy the whole code \`${form.shownBy}\` printed, starting with ${form.prefix}`;
  if (text.length > MAX_CODE_LENGTH || !text.startsWith(form.prefix)) {
    const other = form === FORMS.invite ? FORMS.join : FORMS.invite;
    if (text.startsWith(other.prefix)) {
      throw new PairingCodeError(`this code is for \`${other.readBy}\` (it was shown by \`${other.shownBy}\`)`,
        { hint: `run \`${other.readBy}\` with it on the other device` });
    }
    if (text.startsWith('starmux://pair/')) {
      throw new PairingCodeError('this is a machine pairing code, not a device code',
        { hint: 'pair machines with the pairing screen' });
    }
    throw new PairingCodeError(`this is not a starmux ${form.what}`, { hint });
  }
  const pairs = parsePairs(text.slice(form.prefix.length), 2 * form.params.length);
  if (pairs === null || pairs.some(([, value]) => value === '')) {
    throw new PairingCodeError(`the ${form.what}'s parameters are garbled`, { hint });
  }
  const params = Object.fromEntries(pairs);
  const keys = Object.keys(params);
  if (keys.length !== pairs.length || keys.length !== form.params.length || !form.params.every((k) => Object.hasOwn(params, k))) {
    throw new PairingCodeError(`the ${form.what} lacks or repeats a part (was it cut off?)`, { hint });
  }
  try {
    if (form === FORMS.invite && !ROLES.includes(params.role)) throw new UsageError(`'${params.role}' is not a valid DeviceRole`);
    const code = {
      relayUrl: checkRelayUrl(params.relay),
      relayFingerprint: normalizeFingerprint(params.rfp),
      ticket: unb64(params.ticket, TICKET_SIZE, 'ticket', hint),
      [form.shower]: normalizeFingerprint(params[form.fpParam]),
      secret: unb64(params.secret, SECRET_SIZE, 'secret', hint),
    };
    if (form === FORMS.invite) code.role = params.role;
    return Object.freeze(code);
  } catch (error) {
    if (error instanceof PairingCodeError) throw error;
    throw new PairingCodeError(`the ${form.what} is malformed: ${error.message}`, { hint });
  }
}

export const formatLinkCode = (code) => formatDeviceCode(FORMS.invite, code);
export const parseLinkCode = (input) => parseDeviceCode(FORMS.invite, input);
/** A join code, shown by a new device (this browser) for `starmux devices add CODE`. */
export const formatJoinCode = (code) => formatDeviceCode(FORMS.join, code);
export const parseJoinCode = (input) => parseDeviceCode(FORMS.join, input);
