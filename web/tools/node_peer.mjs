// The JavaScript side of the interop tests (tests/integration/test_web_interop.py):
// a controller device made of web/proto's modules, driven through a real relay.
//
//   node --experimental-websocket web/tools/node_peer.mjs HOME < request.json
//
// The request (JSON on stdin, so codes and tokens never appear in argv):
//   {"command": "link", "code": "starmux://link/v1?…", "name": "phone"}   join an account
//   {"command": "register", "relay": URL, "token": "…", "name": "web"}   a new account
//   {"command": "invite", "role": "operator"}   show a link code, add whoever uses it
//   {"command": "pair", "code": "starmux://pair/v1?…"}                   pair a machine
//   {"command": "sessions"}                  KK to every machine: its sessions
//   {"command": "run", "argv": [...], "cwd": "…"}  KK, start a session, wait for its end
//   {"command": "decide", "title": "…", "approve": true, "reason": "…"}   a checkpoint
//   {"command": "machine", "relay": URL, "name": "js-box"}   act as a machine: show a
//        pairing code, pair, answer KK and sync requests (one finished session) until killed
// Progress and results are JSON lines on stdout ({"event": …}); failures exit 1 with
// {"event": "error", "message": …}. HOME/state.json (0600) keeps the device's keys,
// account, device log and machine cards between runs.

import fs from 'node:fs';
import path from 'node:path';

import { equal, fromHex, toHex } from '../proto/bytes.js';
import { Inviter, NewDevice } from '../proto/device_link.js';
import { DeviceLog, Op, decodeEntries, encodeEntries } from '../proto/device_log.js';
import { Kind, unwrap, wrap } from '../proto/e2e.js';
import { fingerprintsMatch } from '../proto/fingerprint.js';
import { NodeKeys, Role, decodeCard } from '../proto/identity.js';
import { finish, initiate, respond } from '../proto/live_channel.js';
import { randomBytes } from '../proto/noise.js';
import { ControllerPairing, MachinePairing } from '../proto/pairing.js';
import { formatLinkCode, formatPairingCode, parseLinkCode, parsePairingCode } from '../proto/pairing_code.js';
import { RelayConnection } from '../proto/relay_connection.js';
import { APP } from '../proto/codec.js';
import { decideCheckpoint } from '../proto/decisions.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'lost']);
const home = process.argv[2];
const stateFile = path.join(home, 'state.json');
const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
const now = () => Date.now() / 1000;

function load() {
  const raw = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  const keys = new NodeKeys(fromHex(raw.signing_seed), fromHex(raw.dh_private));
  return {
    ...raw,
    keys,
    card: keys.card(Role.CONTROLLER, raw.name),
    relayKey: fromHex(raw.relay_key),
    account: fromHex(raw.account),
    log: DeviceLog.verify(decodeEntries(fromHex(raw.log))),
    machines: raw.machines.map((hex) => decodeCard(fromHex(hex))),
  };
}

function save(state) {
  const { signingSeed, dhPrivate } = state.keys.exportSecrets();
  fs.mkdirSync(home, { recursive: true, mode: 0o700 });
  const raw = {
    name: state.name,
    relay_url: state.relayUrl,
    relay_key: toHex(state.relayKey),
    account: toHex(state.account),
    signing_seed: toHex(signingSeed),
    dh_private: toHex(dhPrivate),
    log: toHex(state.log.encode()),
    machines: state.machines.map((card) => toHex(card.encoded)),
  };
  fs.writeFileSync(stateFile, JSON.stringify(raw), { mode: 0o600 });
}

const fromPeer = (peer, kinds) => (event) => event.type === 'data' && equal(event.peer, peer) && kinds.includes(event.body[0]);

async function link(request) {
  const code = parseLinkCode(request.code);
  const keys = NodeKeys.generate();
  const card = keys.card(Role.CONTROLLER, request.name);
  const relay = await RelayConnection.open(code.relayUrl, keys, card);
  if (!fingerprintsMatch(relay.auth.relayCard.fingerprint, code.relayFingerprint)) throw new Error('the relay is not the one the code names');
  const opened = await relay.request('open-link-ticket', { ticket: code.ticket });
  const inviterKey = opened.machine_key;
  const device = new NewDevice(keys, card, code, { relayKey: relay.auth.relayCard.signPublic });
  relay.sendData(inviterKey, device.start());
  while (device.phase !== 'linked') {
    const event = await relay.next(fromPeer(inviterKey, [Kind.PAIR_HANDSHAKE, Kind.PAIR_TRANSPORT, Kind.PAIR_ABORT]), 30000);
    if (event.type === 'closed') throw new Error(`relay closed ${event.code}`);
    const reply = device.receive(event.body);
    if (reply !== null) relay.sendData(inviterKey, reply);
    if (device.phase === 'await-welcome' && reply !== null) say('comparison', { code: device.comparisonCode });
  }
  save({ name: request.name, relayUrl: code.relayUrl, relayKey: relay.auth.relayCard.signPublic, account: device.account, keys, log: device.log, machines: device.machines });
  say('linked', {
    account: toHex(device.account),
    role: device.log.roleOf(keys.signPublic),
    devices: device.log.devices.map((d) => d.name),
    machines: device.machines.map((m) => m.name),
  });
  relay.close();
}

async function register(request) {
  const keys = NodeKeys.generate();
  const card = keys.card(Role.CONTROLLER, request.name);
  const relay = await RelayConnection.open(request.relay, keys, card);
  const { account } = await relay.request('register-account', { token: request.token });
  const log = DeviceLog.genesis(keys, card, account, { at: now() });
  await relay.request('append-device-log', { entries: log.encode(), ticket: new Uint8Array(0) });
  save({ name: request.name, relayUrl: request.relay, relayKey: relay.auth.relayCard.signPublic, account, keys, log, machines: [] });
  say('registered', { account: toHex(account), fingerprint: keys.fingerprint });
  relay.close();
}

async function invite(request) {
  const state = load();
  const { keys, card, account } = state;
  let { log } = state;
  const relay = await RelayConnection.open(state.relay_url, keys, card, { pinnedRelayKey: state.relayKey });
  const { ticket } = await relay.request('create-link-ticket', {});
  const secret = randomBytes(32);
  const inviter = new Inviter(keys, card, { account, relayKey: state.relayKey, ticket, secret });
  say('code', { code: formatLinkCode({ relayUrl: state.relay_url, relayFingerprint: relay.auth.relayCard.fingerprint, ticket, inviterFingerprint: keys.fingerprint, secret, role: request.role }) });
  let peer = null;
  while (inviter.phase !== 'linked') {
    const event = await relay.next((e) => e.type === 'data' && (peer === null || equal(e.peer, peer)), 60000);
    if (event.type === 'closed') throw new Error(`relay closed ${event.code}`);
    peer = event.peer;
    const reply = inviter.receive(event.body);
    if (reply !== null) relay.sendData(peer, reply);
    if (inviter.phase === 'confirming') {
      say('comparison', { code: inviter.comparisonCode, device: inviter.device.name });
      const [extended, entry] = log.append(keys, Op.ADD, inviter.device.signPublic, { card: inviter.device, role: request.role, at: now() });
      await relay.request('append-device-log', { entries: encodeEntries([entry]), ticket });
      log = extended;
      relay.sendData(peer, inviter.welcome(log, state.machines.map((m) => m.encoded)));
    }
  }
  save({ ...state, relayUrl: state.relay_url, log });
  say('linked', { device: inviter.device.name, devices: log.devices.map((d) => d.name) });
  relay.close();
}

async function pair(request) {
  const state = load();
  const code = parsePairingCode(request.code);
  const relay = await RelayConnection.open(state.relay_url, state.keys, state.card, { pinnedRelayKey: state.relayKey });
  if (!fingerprintsMatch(relay.auth.relayCard.fingerprint, code.relayFingerprint)) throw new Error('the code names another relay');
  const { ticket } = code;
  const opened = await relay.request('open-ticket', { ticket });
  const machineKey = opened.machine_key;
  const pairing = new ControllerPairing(state.keys, state.card, code, { relayKey: state.relayKey, account: state.account });
  const started = performance.now();
  relay.sendData(machineKey, pairing.start(machineKey));
  while (pairing.phase !== 'paired') {
    const event = await relay.next(fromPeer(machineKey, [Kind.PAIR_HANDSHAKE, Kind.PAIR_TRANSPORT, Kind.PAIR_ABORT]), 30000);
    if (event.type === 'closed') throw new Error(`relay closed ${event.code}`);
    const reply = pairing.receive(event.body);
    if (reply !== null) relay.sendData(machineKey, reply);
    if (pairing.phase === 'confirmed') {
      say('comparison', { code: pairing.comparisonCode, machine: pairing.machineName });
      const issuedAt = now();
      const [signature, granted] = pairing.grant(state.keys, { issuedAt });
      await relay.request('grant-machine', { ticket, machine_card: pairing.machineCard.encoded, issued_at: issuedAt, signature });
      relay.sendData(machineKey, granted);
    }
  }
  save({ ...state, relayUrl: state.relay_url, machines: [...state.machines, pairing.machineCard] });
  say('paired', { machine: pairing.machineName, fingerprint: pairing.machineCard.fingerprint, ms: Math.round(performance.now() - started) });
  const listed = await relay.request('list-machines', {});
  say('listed', {
    ms: Math.round(performance.now() - started),
    machines: listed.machines.map((m) => ({ name: decodeCard(m.card).name, online: m.online })),
  });
  relay.close();
}

/** KK to one machine, the device log first, then sync to live; returns what it needs to go on. */
async function openLive(relay, state, machine) {
  const key = machine.signPublic;
  relay.sendData(key, wrap(Kind.DEVICE_LOG, state.log.encode()));
  const [hs, first] = initiate(state.keys, machine, { relayKey: state.relayKey });
  relay.sendData(key, first);
  const answer = await relay.next(fromPeer(key, [Kind.SESSION_HANDSHAKE, Kind.SESSION_RESET]), 20000);
  if (answer.type === 'closed' || answer.body[0] !== Kind.SESSION_HANDSHAKE) throw new Error('the machine did not answer the handshake');
  const channel = finish(hs, unwrap(answer.body)[1]);
  relay.sendData(key, channel.seal('device-log-sync', { entries: state.log.encode() }));
  relay.sendData(key, channel.seal('sync-request', { epoch: '', after_seq: 0, limit: 1000 }));
  const sessions = new Map();
  const live = { key, channel, sessions, acks: new Map(), output: new Map(), checkpoints: new Map() };
  for (;;) {
    const page = await receive(relay, live);
    if (page.kind === 'event-page' && !page.more && !page.live) return live;
  }
}

async function receive(relay, live) {
  for (;;) {
    const event = await relay.next(fromPeer(live.key, [Kind.SESSION_TRANSPORT, Kind.SESSION_RESET]), 30000);
    if (event.type === 'closed') throw new Error(`relay closed ${event.code}`);
    if (event.body[0] === Kind.SESSION_RESET) throw new Error('the machine reset the channel');
    const message = live.channel.open(unwrap(event.body)[1]);
    if (message.kind === 'command-ack') live.acks.set(message.command_id, message);
    if (message.kind === 'event-page') {
      for (const logged of message.events) apply(live, logged);
    }
    return message;
  }
}

function apply(live, logged) {
  const event = APP.decode(logged.body);
  const row = live.sessions.get(logged.session) ?? { id: logged.session, status: 'queued', argv: [], title: '' };
  if (event.kind === 'session-created') Object.assign(row, { argv: event.argv, title: event.title, cwd: event.cwd });
  if (event.kind === 'session-status') Object.assign(row, { status: event.status, exit_code: event.exit_code });
  if (event.kind === 'checkpoint-raised') live.checkpoints.set(event.checkpoint, { id: event.checkpoint, title: event.title, session: logged.session, decided: null });
  if (event.kind === 'checkpoint-decided' && live.checkpoints.has(event.checkpoint)) live.checkpoints.get(event.checkpoint).decided = event.decision;
  if (event.kind === 'output') live.output.set(logged.session, (live.output.get(logged.session) ?? '') + new TextDecoder().decode(event.data));
  live.sessions.set(logged.session, row);
}

async function sessions() {
  const state = load();
  const relay = await RelayConnection.open(state.relay_url, state.keys, state.card, { pinnedRelayKey: state.relayKey });
  const result = [];
  for (const machine of state.machines) {
    const started = performance.now();
    const live = await openLive(relay, state, machine);
    result.push({ machine: machine.name, ms: Math.round(performance.now() - started), sessions: [...live.sessions.values()] });
  }
  say('sessions', { machines: result });
  relay.close();
}

async function run(request) {
  const state = load();
  const relay = await RelayConnection.open(state.relay_url, state.keys, state.card, { pinnedRelayKey: state.relayKey });
  const live = await openLive(relay, state, state.machines[0]);
  const session = `js-${toHex(randomBytes(6))}`;
  const commandId = `c-${toHex(randomBytes(6))}`;
  const body = APP.encode('start-session', { session, argv: request.argv, cwd: request.cwd, title: 'from js', env: new Map(), pty: false, attachments: [] });
  relay.sendData(live.key, live.channel.seal('command', { command_id: commandId, body }));
  while (!live.acks.has(commandId) || !TERMINAL.has(live.sessions.get(session)?.status)) {
    const ack = live.acks.get(commandId);
    if (ack !== undefined && !ack.ok) throw new Error(`the machine refused the command: ${ack.error}`);
    await receive(relay, live);
  }
  say('ran', { session, ack: live.acks.get(commandId).ok, status: live.sessions.get(session).status, output: live.output.get(session) ?? '' });
  relay.close();
}

/** A machine made of web/proto (the XXpsk3 and KK responder): shows a pairing code,
 *  pairs, then answers live channels with one finished session, until killed. */
async function machine(request) {
  const keys = NodeKeys.generate();
  const card = keys.card(Role.MACHINE, request.name);
  const relay = await RelayConnection.open(request.relay, keys, card);
  const relayKey = relay.auth.relayCard.signPublic;
  const { ticket } = await relay.request('create-ticket', {});
  const secret = randomBytes(32);
  const pairing = new MachinePairing(keys, card, { relayKey, ticket, secret });
  say('code', { code: formatPairingCode({ relayUrl: request.relay, relayFingerprint: relay.auth.relayCard.fingerprint, ticket, machineFingerprint: keys.fingerprint, secret }) });
  let controller = null;
  while (pairing.phase !== 'paired') {
    const event = await relay.next((e) => e.type === 'data' && (controller === null || equal(e.peer, controller)), 60000);
    if (event.type === 'closed') throw new Error(`relay closed ${event.code}`);
    controller = event.peer;
    const reply = pairing.receive(event.body);
    if (reply !== null) relay.sendData(controller, reply);
  }
  say('paired', { controller: pairing.controllerCard.name, comparison: pairing.comparisonCode });
  const at = now();
  const logged = [
    { seq: 1, at, session: 'js-served', body: APP.encode('session-created', { argv: ['served', 'by', 'js'], cwd: '/', title: 'a JS machine', pty: false, command_id: 'c-js' }) },
    { seq: 2, at, session: 'js-served', body: APP.encode('session-status', { status: 'succeeded', exit_code: 0, detail: '' }) },
  ];
  const channels = new Map();
  for (;;) {
    const event = await relay.next((e) => e.type === 'data' && equal(e.peer, pairing.controllerCard.signPublic), 3600000);
    if (event.type === 'closed') return;
    const [kind, payload] = unwrap(event.body);
    if (kind === Kind.SESSION_HANDSHAKE) {
      const [channel, reply] = respond(keys, pairing.controllerCard, payload, { relayKey });
      channels.set('controller', channel);
      relay.sendData(event.peer, reply);
    } else if (kind === Kind.SESSION_TRANSPORT && channels.has('controller')) {
      const channel = channels.get('controller');
      const message = channel.open(payload);
      if (message.kind === 'sync-request') {
        const events = message.epoch === 'js-epoch' ? logged.filter((e) => e.seq > message.after_seq) : logged;
        relay.sendData(event.peer, channel.seal('event-page', { epoch: 'js-epoch', events, more: false, live: false }));
        say('served', { after_seq: message.after_seq, events: events.length });
      }
    }
  }
}

/** Approve or deny the pending checkpoint titled `title`; times the decision's effect. */
async function decide(request) {
  const state = load();
  const relay = await RelayConnection.open(state.relay_url, state.keys, state.card, { pinnedRelayKey: state.relayKey });
  const machine = state.machines[0];
  const live = await openLive(relay, state, machine);
  const pending = () => [...live.checkpoints.values()].find((c) => c.title === request.title && c.decided === null);
  while (pending() === undefined) await receive(relay, live);
  const checkpoint = pending();
  const commandId = `c-${toHex(randomBytes(6))}`;
  const fields = decideCheckpoint(state.keys, machine.signPublic, { checkpoint: checkpoint.id, approve: request.approve, reason: request.reason ?? '', decidedAt: now() });
  const sent = performance.now();
  relay.sendData(live.key, live.channel.seal('command', { command_id: commandId, body: APP.encode('decide-checkpoint', fields) }));
  while (!live.acks.has(commandId)) await receive(relay, live);
  const ackMs = performance.now() - sent;
  const ack = live.acks.get(commandId);
  if (ack.ok) {
    while (!TERMINAL.has(live.sessions.get(checkpoint.session)?.status)) await receive(relay, live);
  }
  say('decided', {
    checkpoint: checkpoint.id, ok: ack.ok, result: ack.result, error: ack.error,
    ack_ms: Math.round(ackMs), end_ms: Math.round(performance.now() - sent),
    status: live.sessions.get(checkpoint.session)?.status, output: live.output.get(checkpoint.session) ?? '',
  });
  relay.close();
}

const COMMANDS = { link, register, invite, pair, sessions, run, machine, decide };
try {
  const request = JSON.parse(fs.readFileSync(0, 'utf8'));
  await COMMANDS[request.command](request);
  process.exit(0);
} catch (error) {
  say('error', { message: `${error.name}: ${error.message}`, hint: error.hint ?? '' });
  process.exit(1);
}
