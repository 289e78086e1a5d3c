// The message codec, mirroring starmux/codec.py: `[kind, version, {field: value}]` in
// msgpack, decoded strictly by the schema generated from the Python codecs (schema.js).
//
//   CONTROL, APP, LOG: MessageCodec instances (relay control, inside channels, device log)
//   codec.encode(kind, fields) -> Uint8Array        fields: {name: value} (wire names)
//   codec.decode(bytes) -> {kind, ...fields}         throws codec.Error only
//   codec.decodeAs(bytes, kind) -> {kind, ...fields}
//   codec.understands(bytes) -> bool                 a kind and version we know
//
// Values: int -> Number (BigInt beyond 2**53), float -> Number, str -> string, bin ->
// Uint8Array, bool, nil -> null, enum -> string, [X] -> Array, {str: X} -> Map, nested
// message -> plain object of its fields. Strict as in Python: known kind, exact version,
// the exact field set, each value of its type (a bool is not an int, ints are signed
// 64-bit, floats finite, a float field takes an int), enums only their values, the
// size limit, and each message's own checks (CHECKS below mirror the __post_init__ of
// starmux/messages.py, task_messages.py, review_messages.py, checkpoint_preview.py,
// transfer_messages.py and device_log.py).

import { MessageError, RemoteProtocolError, UsageError, DeviceLogError } from './errors.js';
import { Float64, WireFloat, isPlainObject, pack, unpack } from './msgpack.js';
import { SCHEMA } from './schema.js';

export const MAX_MESSAGE_SIZE = 1 << 20;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

class Invalid extends Error {}

const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
// Python's re.match with `$` also matches before one trailing newline.
const TAG_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,31}(=[A-Za-z0-9_.:/+-]{1,64})?\n?$/;
const MACHINE_TASK_STATES = new Set(['accepted', 'awaiting_approval', 'cancelled', 'failed', 'lost', 'running', 'succeeded', 'timed_out']);
const DEVICE_ROLES = new Set(['owner', 'operator', 'viewer']);
// starmux/checkpoint_preview.py and starmux/approval_rules.py
const MAX_PREVIEW = 24 * 1024;
const MAX_PATTERN = 1024;
const RULE_TOOL = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;
// Python's str.isprintable(): no control, format, surrogate, private-use, unassigned,
// line or paragraph separator, and no space separator but the space itself.
const UNPRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;

const codePoints = (text) => [...text].length;

// starmux/transfer_messages.py: file names and failure reasons reach terminals and
// file systems: one line, no control or format characters, no path separators.
const FILE_UNPRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;
const CHUNK_SIZE = 60 * 1024 - 128;

function isFileName(name) {
  const size = new TextEncoder().encode(name).length;
  return size >= 1 && size <= 255 && name !== '.' && name !== '..' && !/[/\\]/.test(name) &&
    !FILE_UNPRINTABLE.test(name);
}

/** RulePattern.parse (starmux/approval_rules.py) accepts it. */
export function isRulePattern(text) {
  if (typeof text !== 'string' || UNPRINTABLE.test(text) || codePoints(text) > MAX_PATTERN) return false;
  const trimmed = text.replace(/^ +| +$/g, '');
  if (!trimmed) return false;
  const open = trimmed.indexOf('(');
  if (open < 0) return RULE_TOOL.test(trimmed);
  const rest = trimmed.slice(open + 1);
  return RULE_TOOL.test(trimmed.slice(0, open)) && rest.endsWith(')') && rest.length > 1;
}

export function isId(value) {
  return typeof value === 'string' && ID_PATTERN.test(value);
}

function need(condition) {
  if (!condition) throw new Invalid();
}

/** Each message's own rules, by kind (Python: __post_init__). */
export const CHECKS = {
  'sync-request': (m) => need(m.epoch === '' || isId(m.epoch)),
  'live-ack': (m) =>
    need(
      isId(m.epoch) &&
        m.seq >= 0 &&
        m.window_pages >= 1 &&
        m.window_pages <= 2 ** 20 &&
        m.window_bytes >= 1 &&
        m.window_bytes <= 2 ** 40,
    ),
  'logged-event': (m) => need(m.seq >= 1 && isId(m.session)),
  'event-page': (m) => need(isId(m.epoch)),
  command: (m) => need(isId(m.command_id)),
  'command-ack': (m) => need(isId(m.command_id)),
  'start-session': (m) => need(isId(m.session) && m.attachments.length <= 64 && m.attachments.every(isId)),
  'cancel-session': (m) => need(isId(m.session)),
  'send-input': (m) => need(isId(m.session)),
  'decide-checkpoint': (m) => need(isId(m.checkpoint)),
  'session-created': (m) => need(isId(m.command_id)),
  'checkpoint-raised': (m) => need(isId(m.checkpoint)),
  'checkpoint-decided': (m) => need(isId(m.checkpoint) && (m.by.length === 0 || m.by.length === 32)),
  'assign-task': (m) => need(isId(m.task) && m.argv.length > 0),
  'cancel-task': (m) => need(isId(m.task)),
  'task-progress': (m) => need(isId(m.task) && (m.session === null || isId(m.session)) && MACHINE_TASK_STATES.has(m.state)),
  'checkpoint-preview': (m) => {
    need(codePoints(m.tool) <= 64 && codePoints(m.subject) <= 4096 && codePoints(m.cwd) <= 4096);
    const size = new TextEncoder().encode(m.text).length;
    need(size <= MAX_PREVIEW && size <= Number(m.full_size) && Number(m.full_size) < 2 ** 53);
  },
  'set-approval-rule': (m) => need(isId(m.rule) && isId(m.session) && isRulePattern(m.pattern)),
  'remove-approval-rule': (m) => need(isId(m.rule)),
  'approval-rule-set': (m) => need(isId(m.rule) && isRulePattern(m.pattern) && m.by.length === 32),
  'approval-rule-removed': (m) => need(isId(m.rule) && m.by.length === 32),
  'show-diff': (m) => need(isId(m.session)),
  'fetch-file': (m) => need(isId(m.transfer) && isId(m.artifact)),
  'offer-file': (m) => need(isId(m.transfer) && isFileName(m.name) && m.digest.length === 32),
  'file-chunk': (m) => need(isId(m.transfer) && m.data.length <= CHUNK_SIZE),
  'file-credit': (m) => need(isId(m.transfer)),
  'file-failed': (m) => need(isId(m.transfer) && codePoints(m.reason) <= 300 && !FILE_UNPRINTABLE.test(m.reason)),
  'artifact-published': (m) => need(isId(m.artifact) && isFileName(m.name) && m.digest.length === 32),
  // starmux/notify_messages.py
  'notify-target': (m) => need(isId(m.target) && codePoints(m.url) <= 2048 && (m.target_kind === 'push') === (m.url === '')),
  'notify-target-remove': (m) => need(isId(m.target)),
  'notify-test': (m) => need(m.target === '' || isId(m.target)),
  viewing: (m) => need(m.session === '' || isId(m.session)),
  'notify-status': (m) => need(isId(m.target) && m.device.length === 32 && codePoints(m.detail) <= 300),
  'machine-load': (m) => need(m.tags.length <= 32 && m.tags.every((tag) => TAG_PATTERN.test(tag))),
  'set-tags': (m) => {
    const tags = [...m.add, ...m.remove];
    need(tags.length >= 1 && tags.length <= 32 && tags.every((tag) => TAG_PATTERN.test(tag)));
  },
  'device-log-entry': (m) => {
    need(m.account.length === 16 && m.seq >= 0 && m.seq < 4096);
    need(m.prev.length === 32 && m.subject.length === 32 && m.author.length === 32 && m.signature.length === 64);
    need((m.op === 'add') === (m.card.length > 0));
    need((m.op === 'remove') === (m.role === ''));
    need(m.role === '' || DEVICE_ROLES.has(m.role));
  },
};

function toInt(value) {
  if (typeof value === 'number' && Number.isInteger(value)) return value;
  if (typeof value === 'bigint' && value >= INT64_MIN && value <= INT64_MAX) return value;
  throw new Invalid();
}

function toFloat(value) {
  let number;
  if (value instanceof WireFloat) number = value.value;
  else if (typeof value === 'number' && Number.isInteger(value)) number = value;
  else if (typeof value === 'bigint') number = Number(value);
  else throw new Invalid();
  need(Number.isFinite(number));
  return number;
}

export class MessageCodec {
  constructor(name, ErrorClass, schema = SCHEMA[name]) {
    this.name = name;
    this.Error = ErrorClass;
    this.maxSize = schema.maxSize;
    this.kinds = schema.kinds;
  }

  // --- decoding -----------------------------------------------------------------
  #convert(type, value) {
    if (typeof type === 'string') {
      switch (type) {
        case 'int':
          return toInt(value);
        case 'float':
          return toFloat(value);
        case 'str':
          need(typeof value === 'string');
          return value;
        case 'bin':
          need(value instanceof Uint8Array);
          return value;
        case 'bool':
          need(typeof value === 'boolean');
          return value;
        case 'nil':
          need(value === null);
          return null;
        default:
          throw new UsageError(`unknown schema type ${type}`);
      }
    }
    if ('range' in type) {
      const number = this.#convert(type.of, value);
      need(Number(number) >= type.range[0] && Number(number) <= type.range[1]);
      return number;
    }
    if ('enum' in type) {
      need(typeof value === 'string' && type.enum.includes(value));
      return value;
    }
    if ('union' in type) {
      for (const option of type.union) {
        try {
          return this.#convert(option, value);
        } catch (error) {
          if (!(error instanceof Invalid)) throw error;
        }
      }
      throw new Invalid();
    }
    if ('list' in type) {
      need(Array.isArray(value));
      return value.map((item) => this.#convert(type.list, item));
    }
    if ('map' in type) {
      need(isPlainObject(value));
      return new Map(Object.entries(value).map(([k, v]) => [k, this.#convert(type.map, v)]));
    }
    if ('message' in type) return this.#fields(type.message, value);
    throw new UsageError('unknown schema type');
  }

  #fields(kind, value) {
    const spec = this.kinds[kind];
    need(isPlainObject(value));
    const keys = Object.keys(value);
    need(keys.length === spec.fields.length && spec.fields.every(([name]) => Object.hasOwn(value, name)));
    const out = {};
    for (const [name, type] of spec.fields) out[name] = this.#convert(type, value[name]);
    CHECKS[kind]?.(out);
    return out;
  }

  decode(data) {
    if (!(data instanceof Uint8Array)) throw new this.Error('a message must be bytes');
    if (data.length > this.maxSize) throw new this.Error(`message exceeds ${this.maxSize} bytes`);
    let value;
    try {
      value = unpack(data);
    } catch {
      throw new this.Error('message is not valid msgpack');
    }
    if (!Array.isArray(value) || value.length !== 3) throw new this.Error('a message is [kind, version, fields]');
    const [kind, version, fields] = value;
    if (typeof kind !== 'string' || !Object.hasOwn(this.kinds, kind)) throw new this.Error('unknown message kind');
    if (version !== this.kinds[kind].version) throw new this.Error(`unsupported ${kind} version`);
    try {
      return { kind, ...this.#fields(kind, fields) };
    } catch (error) {
      if (error instanceof Invalid) throw new this.Error(`invalid ${kind} message`);
      throw error;
    }
  }

  decodeAs(data, kind) {
    const message = this.decode(data);
    if (message.kind !== kind) throw new this.Error(`expected ${kind}, got ${message.kind}`);
    return message;
  }

  understands(data) {
    if (!(data instanceof Uint8Array) || data.length > this.maxSize) return false;
    try {
      const value = unpack(data);
      return Array.isArray(value) && value.length === 3 && typeof value[0] === 'string' &&
        Object.hasOwn(this.kinds, value[0]) && value[1] === this.kinds[value[0]].version;
    } catch {
      return false;
    }
  }

  // --- encoding -----------------------------------------------------------------
  #wire(type, value, where) {
    if (typeof type === 'string') {
      const ok = {
        int: () => (typeof value === 'number' && Number.isInteger(value)) || typeof value === 'bigint',
        float: () => typeof value === 'number' && Number.isFinite(value),
        str: () => typeof value === 'string',
        bin: () => value instanceof Uint8Array,
        bool: () => typeof value === 'boolean',
        nil: () => value === null,
      }[type]();
      if (!ok) throw new Invalid(where);
      return type === 'float' ? new Float64(value) : value;
    }
    if ('range' in type) {
      const wire = this.#wire(type.of, value, where);
      if (!(Number(value) >= type.range[0] && Number(value) <= type.range[1])) throw new Invalid(where);
      return wire;
    }
    if ('enum' in type) {
      if (!type.enum.includes(value)) throw new Invalid(where);
      return value;
    }
    if ('union' in type) {
      for (const option of type.union) {
        try {
          return this.#wire(option, value, where);
        } catch (error) {
          if (!(error instanceof Invalid)) throw error;
        }
      }
      throw new Invalid(where);
    }
    if ('list' in type) {
      if (!Array.isArray(value)) throw new Invalid(where);
      return value.map((item) => this.#wire(type.list, item, where));
    }
    if ('map' in type) {
      const entries = value instanceof Map ? [...value] : isPlainObject(value) ? Object.entries(value) : null;
      if (entries === null) throw new Invalid(where);
      return new Map(entries.map(([k, v]) => [String(k), this.#wire(type.map, v, where)]));
    }
    return this.#wireFields(type.message, value);
  }

  #wireFields(kind, fields) {
    const spec = this.kinds[kind];
    if (!isPlainObject(fields)) throw new Invalid(kind);
    const out = new Map();
    for (const [name, type] of spec.fields) {
      if (!Object.hasOwn(fields, name)) throw new Invalid(`${kind}.${name} missing`);
      out.set(name, this.#wire(type, fields[name], `${kind}.${name}`));
    }
    try {
      CHECKS[kind]?.(fields);
    } catch (error) {
      if (error instanceof Invalid) throw new Invalid(`${kind} breaks its own rules`);
      throw error;
    }
    return out;
  }

  encode(kind, fields = {}) {
    if (!Object.hasOwn(this.kinds, kind)) throw new UsageError(`${kind} is not a ${this.name} message`);
    let wire;
    try {
      wire = this.#wireFields(kind, fields);
    } catch (error) {
      if (error instanceof Invalid) throw new UsageError(`cannot encode ${kind}: ${error.message}`);
      throw error;
    }
    const data = pack([kind, this.kinds[kind].version, wire]);
    if (data.length > this.maxSize) throw new UsageError(`${kind} message exceeds ${this.maxSize} bytes`);
    return data;
  }
}

class DeviceLogFormatError extends DeviceLogError {
  constructor(message) {
    super('format', message);
  }
}

export const CONTROL = new MessageCodec('control', RemoteProtocolError);
export const APP = new MessageCodec('app', MessageError);
export const LOG = new MessageCodec('log', DeviceLogFormatError);
export const CODECS = { control: CONTROL, app: APP, log: LOG };
