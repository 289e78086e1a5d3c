// An account's device log: a signed hash chain of add/remove/set-role entries,
// mirroring starmux/device_log.py (same rules, same errors by kind).
//
//   DeviceLog.genesis(keys, card, account, {at}) -> log
//   DeviceLog.verify(entries, {account}) -> log       (from entry 0)
//   log.extend(entries) / log.update(offered) -> new log (immutable; refusals throw)
//   log.append(keys, op, subject, {card, role, at}) -> [newLog, entry]
//   log.entries, log.head {seq, hash}, log.devices, log.device(key), log.roleOf(key),
//   log.isRemoved(key), log.allows(key, action), log.since(head), log.encode()
//   encodeEntries(entries), decodeEntries(bytes) (DeviceLogError kind 'format')
//   entryHash(entry), signEntry(...), Op, DeviceRole, Action, allowed(role, action)
//
// Entry signed bytes: transcript('starmux/device-log/v1', account, seq (8 bytes BE),
// prev, op, subject, card, role, signedTime(at), author); an entry's hash is BLAKE2b-256
// keyed 'starmux/device-log-entry/v1' over transcript(that domain, signed bytes,
// signature). Invariants: verification from the genesis or a verified head; seq from 0
// with no gap and prev = hash of the entry before (gap / fork / stale otherwise); each
// entry signed by an owner at that point; at least one owner always; a removed device
// never comes back; the account id is inside every signature.

import { blake2b } from '../vendor/node_modules/@noble/hashes/blake2.js';
import { equal, i64be, toHex, utf8 } from './bytes.js';
import { LOG } from './codec.js';
import { CryptoError, DeviceLogError, RemoteProtocolError, UsageError } from './errors.js';
import { fingerprint } from './fingerprint.js';
import { Role, decodeCard, verifySignature } from './identity.js';
import { signedTime, transcript } from './transcript.js';

export const ENTRY_DOMAIN = 'starmux/device-log/v1';
export const HASH_DOMAIN = 'starmux/device-log-entry/v1';
export const ACCOUNT_BYTES = 16;
export const HASH_BYTES = 32;
export const GENESIS_PREV = new Uint8Array(HASH_BYTES);
export const MAX_ENTRIES = 4096;
export const Op = Object.freeze({ ADD: 'add', REMOVE: 'remove', SET_ROLE: 'set-role' });
export const DeviceRole = Object.freeze({ OWNER: 'owner', OPERATOR: 'operator', VIEWER: 'viewer' });

// starmux/device_roles.py: the permission table is data.
const VIEWER = ['list', 'watch', 'logs'];
const OPERATOR = [...VIEWER, 'run', 'input', 'cancel', 'approve', 'deny'];
const OWNER = [...OPERATOR, 'manage-devices', 'pair-machine', 'revoke-machine'];
export const PERMISSIONS = Object.freeze({ viewer: new Set(VIEWER), operator: new Set(OPERATOR), owner: new Set(OWNER) });
export const allowed = (role, action) => role !== null && role !== undefined && PERMISSIONS[role].has(action);

const fail = (kind, message) => new DeviceLogError(kind, message);
const keyOf = (bytes) => toHex(bytes);

export function signedBytes(entry) {
  return transcript(ENTRY_DOMAIN, entry.account, i64be(entry.seq), entry.prev, utf8(entry.op), entry.subject,
    entry.card, utf8(entry.role), signedTime(entry.at), entry.author);
}

export function entryHash(entry) {
  const data = transcript(HASH_DOMAIN, signedBytes(entry), entry.signature);
  return blake2b(data, { key: utf8(HASH_DOMAIN), dkLen: HASH_BYTES });
}

export const encodeEntries = (entries) => LOG.encode('device-log', { entries: entries.map(({ kind, ...fields }) => fields) });

export function decodeEntries(data) {
  return LOG.decodeAs(data, 'device-log').entries.map((fields) => Object.freeze({ kind: 'device-log-entry', ...fields }));
}

export function signEntry(keys, account, seq, prev, op, subject, card, role, at) {
  const unsigned = { account, seq, prev, op, subject, card, role, at, author: keys.signPublic, signature: new Uint8Array(64) };
  try {
    LOG.encode('device-log-entry', unsigned); // the entry's own shape rules
  } catch (error) {
    throw new UsageError(`invalid device log entry: ${error.message}`);
  }
  return Object.freeze({ kind: 'device-log-entry', ...unsigned, signature: keys.sign(signedBytes(unsigned)) });
}

export class DeviceLog {
  constructor(account, entries, devices, removed) {
    this.account = account;
    this.entries = Object.freeze(entries);
    this._devices = devices; // Map hex(key) -> {key, card, role, addedBy, addedAt}
    this._removed = removed; // Set of hex(key)
    this._hashes = entries.map(entryHash);
    Object.freeze(this);
  }

  static genesis(keys, card, account, { at }) {
    if (!equal(card.signPublic, keys.signPublic)) throw new UsageError('the genesis card must be the signing device\'s own');
    const entry = signEntry(keys, account, 0, GENESIS_PREV, Op.ADD, card.signPublic, card.encoded, 'owner', at);
    return DeviceLog.verify([entry]);
  }

  static verify(entries, { account = null } = {}) {
    if (entries.length === 0) throw fail('gap', 'a device log has at least its first entry');
    if (account !== null && !equal(account, entries[0].account)) throw fail('rule', 'the device log belongs to another account');
    return new DeviceLog(entries[0].account, [], new Map(), new Set()).#with(entries);
  }

  extend(entries) {
    return this.#with(entries);
  }

  update(offered) {
    if (offered.length === 0) return this;
    const start = offered[0].seq;
    if (start > this.entries.length) throw fail('gap', `the offered device log starts at entry ${start}; we hold ${this.entries.length}`);
    for (const entry of offered) {
      if (entry.seq >= this.entries.length) break;
      if (!equal(entryHash(entry), this._hashes[entry.seq])) throw fail('fork', `entry ${entry.seq} differs from the one we hold`);
    }
    const endsAt = offered[offered.length - 1].seq;
    if (endsAt < this.head.seq) throw fail('stale', `offered device log ends at entry ${endsAt}; we hold up to ${this.head.seq}`);
    return this.#with(offered.filter((e) => e.seq >= this.entries.length));
  }

  append(keys, op, subject, { card = null, role = null, at }) {
    const entry = signEntry(keys, this.account, this.entries.length, this.head.hash, op, subject,
      card !== null ? card.encoded : new Uint8Array(0), role ?? '', at);
    return [this.extend([entry]), entry];
  }

  get head() {
    if (this.entries.length === 0) return { seq: -1, hash: GENESIS_PREV };
    return { seq: this.entries.length - 1, hash: this._hashes[this.entries.length - 1] };
  }

  get devices() {
    return [...this._devices.values()];
  }

  device(key) {
    return this._devices.get(keyOf(key)) ?? null;
  }

  roleOf(key) {
    return this.device(key)?.role ?? null;
  }

  isRemoved(key) {
    return this._removed.has(keyOf(key));
  }

  allows(key, action) {
    return allowed(this.roleOf(key), action);
  }

  since(head) {
    if (head.seq >= 0 && head.seq < this.entries.length && equal(this._hashes[head.seq], head.hash)) {
      return this.entries.slice(head.seq + 1);
    }
    return this.entries;
  }

  encode() {
    return encodeEntries(this.entries);
  }

  #with(entries) {
    const devices = new Map(this._devices);
    const removed = new Set(this._removed);
    const chain = [...this.entries];
    const hashes = [...this._hashes];
    for (const entry of entries) {
      if (chain.length >= MAX_ENTRIES) throw fail('rule', `a device log holds at most ${MAX_ENTRIES} entries`);
      checkPlace(entry, chain.length, hashes[hashes.length - 1] ?? GENESIS_PREV, this.account);
      try {
        verifySignature(entry.author, signedBytes(entry), entry.signature);
      } catch (error) {
        if (error instanceof CryptoError) throw fail('signature', `entry ${entry.seq} has a bad signature`);
        throw error;
      }
      apply(entry, devices, removed, chain.length === 0);
      chain.push(entry);
      hashes.push(entryHash(entry));
    }
    return new DeviceLog(this.account, chain, devices, removed);
  }
}

function checkPlace(entry, expectedSeq, expectedPrev, account) {
  if (!equal(entry.account, account)) throw fail('rule', `entry ${entry.seq} belongs to another account`);
  if (entry.seq < expectedSeq) throw fail('fork', `a second entry ${entry.seq}; we already hold one`);
  if (entry.seq > expectedSeq) throw fail('gap', `entry ${entry.seq} follows entry ${expectedSeq - 1}`);
  // Right seq, other predecessor: it was written on top of a different history.
  if (!equal(entry.prev, expectedPrev)) throw fail('fork', `entry ${entry.seq} does not follow the entry before it`);
}

function apply(entry, devices, removed, genesis) {
  if (genesis) {
    if (entry.op !== Op.ADD || !equal(entry.subject, entry.author) || entry.role !== 'owner') {
      throw fail('rule', 'the first entry adds its own author as owner');
    }
  } else {
    const author = devices.get(keyOf(entry.author));
    if (author === undefined || author.role !== 'owner') {
      throw fail('authority', `entry ${entry.seq} is signed by ${fingerprint(entry.author)}, which was not an owner of the account then`);
    }
  }
  const subject = keyOf(entry.subject);
  if (entry.op === Op.ADD) {
    if (devices.has(subject) || removed.has(subject)) throw fail('rule', `entry ${entry.seq} adds a device that is or was a member`);
    let card;
    try {
      card = decodeCard(entry.card);
    } catch (error) {
      if (error instanceof RemoteProtocolError || error instanceof CryptoError) throw fail('rule', `entry ${entry.seq} carries an invalid card`);
      throw error;
    }
    if (card.role !== Role.CONTROLLER || !equal(card.signPublic, entry.subject)) {
      throw fail('rule', `entry ${entry.seq}: the card is not the added device's`);
    }
    devices.set(subject, Object.freeze({ key: entry.subject, card, role: entry.role, addedBy: entry.author, addedAt: entry.at, name: card.name, fingerprint: card.fingerprint }));
    return;
  }
  const current = devices.get(subject);
  if (current === undefined) throw fail('rule', `entry ${entry.seq} names a device that is not current`);
  const newRole = entry.op === Op.SET_ROLE ? entry.role : null;
  const owners = [...devices.values()].filter((d) => d.role === 'owner').length;
  if (current.role === 'owner' && newRole !== 'owner' && owners === 1) {
    throw fail('last-owner', `entry ${entry.seq} would leave the account without an owner`);
  }
  if (newRole === null) {
    devices.delete(subject);
    removed.add(subject);
  } else {
    devices.set(subject, Object.freeze({ ...current, role: newRole }));
  }
}
