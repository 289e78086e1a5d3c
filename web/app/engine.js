// The protocol engine: this device's relay connection, a live channel per
// machine, and what arrives on them turned into store events. It uses the
// protocol modules in web/proto/ and never touches the DOM; the views call it
// through main.js's actions.
//
// Invariants:
// - One relay connection at a time; when it drops, the engine reconnects with
//   capped, jittered backoff and says so in the store (connecting / live /
//   offline since T). A removed device (close 4004) stops for good.
// - The relay's key is pinned at first contact (or checked against a code's
//   fingerprint); a different key later refuses the connection.
// - Machine identities come from pairing or an owner's link welcome, never from
//   the relay's list, which only says who is online.
// - Commands carry an id chosen here and wait in the machine's outbox until the
//   machine acks them: resent after a reconnect, run at most once.

import { toHex } from "../proto/bytes.js";
import { APP } from "../proto/codec.js";
import { decodeEntries, DeviceLog, encodeEntries } from "../proto/device_log.js";
import { decodeCard, NodeKeys, Role } from "../proto/identity.js";
import { subscriptionTranscript } from "../proto/push.js";
import { parseLinkCode, parsePairingCode } from "../proto/pairing_code.js";
import { decideCheckpoint } from "../proto/decisions.js";
import { revokeTranscript } from "../proto/relay_auth.js";
import { idbGet, idbPut } from "./idb.js";
import { FlowError, joinAccount, joinByShowing, PeerInbox, pairMachine } from "./net/flows.js";
import { windowFor } from "./net/live_window.js";
import { MachineChannel } from "./net/machine_channel.js";
import { LinkClosed, RelayLink, RelayRefused } from "./net/relay_link.js";
import { SessionBook, toHexKey } from "./net/sessions.js";

export class EngineError extends Error {}

const DEVICE_STATE = "device"; // IndexedDB "state": { relayUrl, relayKey, account, name, role }
const MACHINES_STATE = "machines"; // hex key -> { card, name }
const LOG_STATE = "device-log"; // the verified device log's encoded entries
const SNAPSHOT_STATE = "snapshot"; // per machine: cursor, sessions, approvals, output
const SNAPSHOT_VERSION = 1;
const SAVE_AFTER_MS = 500;
const BACKOFF_MS = [250, 1000, 2000, 5000, 10000, 20000];
const ACK_MS = 30000;
const DEVICE_REMOVED = 4004;
const REFUSALS = {
  "bad-token": "the relay refused the registration token (it is one-time: use the one the relay printed)",
  exists: "this device already has an account on that relay",
  "rate-limited": "the relay is rate limiting this address: try again in a minute",
  "forbidden-role": "this device's role does not allow that",
};

function relayUrlError(url) {
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") return "the relay URL starts with ws:// or wss://";
    if (parsed.username || parsed.password || parsed.search || parsed.hash) return "the relay URL carries no credentials, query or fragment";
    return null;
  } catch {
    return "that is not a relay URL (e.g. wss://relay.example:8765)";
  }
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const commandId = () => `w-${toHex(crypto.getRandomValues(new Uint8Array(8)))}`;
const sessionId = () => `s-${toHex(crypto.getRandomValues(new Uint8Array(6)))}`;

export class Engine {
  constructor(store, { confirm }) {
    this.store = store;
    this.confirm = confirm; // (title, code, detail) -> Promise<bool>: the person compares codes
    this.keys = null;
    this.device = null;
    this.log = null;
    this.channels = new Map(); // hex key -> MachineChannel
    this.names = new Map(); // hex key -> the machine's name (private names included)
    this.inboxes = new Map(); // hex key -> PeerInbox of a running flow
    this.stranger = null; // showing a join code: (peer) => void for an unknown sender
    this.link = null;
    this.stopped = false;
    this.book = null;
    this.saveTimer = null;
  }

  // --- start-up and persistence ----------------------------------------------------

  async start(secrets) {
    this.keys = new NodeKeys(secrets.slice(0, 32), secrets.slice(32, 64));
    this.book = new SessionBook(this.store, { nameOf: (key) => this.#deviceName(key), me: toHexKey(this.keys.signPublic) });
    this.device = (await idbGet("state", DEVICE_STATE)) || null;
    const logBytes = await idbGet("state", LOG_STATE);
    if (logBytes && this.device) this.log = DeviceLog.verify(decodeEntries(logBytes), { account: this.device.account });
    for (const [hex, saved] of Object.entries((await idbGet("state", MACHINES_STATE)) || {})) {
      this.#addMachine(decodeCard(saved.card), saved.name);
    }
    this.#restore(await idbGet("state", SNAPSHOT_STATE));
    this.#publish();
    addEventListener("pagehide", () => this.#save());
    addEventListener("visibilitychange", () => document.visibilityState === "hidden" && this.#save());
    if (this.device) this.#connectLoop();
  }

  // --- what was seen, kept across reloads ------------------------------------------
  //
  // One snapshot holds, per machine, the cursor together with everything applied up
  // to it (sessions, approvals, output), taken in one synchronous step: a reload
  // resumes sync after that cursor, so nothing is shown twice or skipped. A lost
  // save only means an older snapshot and a longer resync.

  #restore(snapshot) {
    if (!snapshot || snapshot.version !== SNAPSHOT_VERSION) return;
    for (const [hex, saved] of Object.entries(snapshot.machines || {})) {
      const channel = this.channels.get(hex);
      if (!channel) continue;
      const fp = channel.card.fingerprint;
      channel.cursor = saved.cursor;
      this.store.dispatch({ type: "machine/update", fingerprint: fp, fields: { sessions: saved.sessions } });
      for (const approval of saved.approvals) this.store.dispatch({ type: "approval/raised", approval });
      this.book.restore(fp, saved.output);
    }
  }

  #scheduleSave() {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null;
      this.#save();
    }, SAVE_AFTER_MS);
  }

  #save() {
    const machines = {};
    const state = this.store.state;
    for (const [hex, channel] of this.channels) {
      const fp = channel.card.fingerprint;
      machines[hex] = {
        cursor: channel.cursor,
        sessions: (state.machines[fp] || {}).sessions || {},
        approvals: Object.values(state.approvals).filter((a) => a.machine === fp),
        output: this.book.snapshot(fp),
      };
    }
    idbPut("state", SNAPSHOT_STATE, { version: SNAPSHOT_VERSION, machines }).catch((exc) => {
      this.store.dispatch({ type: "notice/add", kind: "error", text: `could not keep the sessions on this device: ${exc.message}` });
    });
  }

  #deviceName(key) {
    const entry = this.log && this.log.device(key);
    return entry ? entry.name : "another device";
  }

  #addMachine(card, name) {
    const hex = toHex(card.signPublic);
    if (!this.channels.has(hex)) this.channels.set(hex, new MachineChannel(card.signPublic, card, this.#host()));
    this.names.set(hex, name || card.name);
  }

  async #saveMachines() {
    const all = {};
    for (const [hex, channel] of this.channels) all[hex] = { card: channel.card.encoded, name: this.names.get(hex) };
    await idbPut("state", MACHINES_STATE, all);
  }

  async #saveLog() {
    if (this.log) await idbPut("state", LOG_STATE, this.log.encode());
  }

  #publish() {
    const d = this.device;
    const me = this.keys.fingerprint;
    this.store.dispatch({
      type: "device/set",
      device: { name: d ? d.name : "", fingerprint: me, role: d ? d.role : "", account: d ? toHex(d.account) : null, relayUrl: d ? d.relayUrl : "" },
    });
    const devices = this.log
      ? this.log.devices.map((entry) => ({ name: entry.name, role: entry.role, fingerprint: entry.fingerprint, key: toHex(entry.key) }))
      : d ? [{ name: d.name, role: d.role, fingerprint: me }] : [];
    this.store.dispatch({ type: "devices/set", devices });
    this.#publishMachines();
  }

  #publishMachines() {
    const machines = {};
    const known = this.store.state.machines;
    for (const [hex, channel] of this.channels) {
      const fp = channel.card.fingerprint;
      machines[fp] = { sessions: {}, ...known[fp], name: this.names.get(hex), key: hex, online: channel.online, live: channel.live };
    }
    this.store.dispatch({ type: "machines/set", machines });
  }

  #host() {
    const self = this;
    return {
      send: (peer, body) => this.link && this.link.open && this.link.sendData(peer, body),
      get keys() {
        return self.keys;
      },
      get relayKey() {
        return self.device.relayKey;
      },
      deviceLog: () => this.log,
      apply: (channel, events, wiped) => {
        const fp = channel.card.fingerprint;
        if (wiped) {
          // The machine's log was wiped: what we held of it is another log's.
          this.book.forgetMachine(fp);
          this.store.dispatch({ type: "machine/update", fingerprint: fp, fields: { sessions: {} } });
        }
        this.book.apply(fp, events);
        this.#scheduleSave();
      },
      changed: (channel) => this.store.dispatch({ type: "machine/update", fingerprint: channel.card.fingerprint, fields: { online: channel.online, live: channel.live } }),
      warn: (channel, text) => this.store.dispatch({ type: "notice/add", kind: "error", text: `${this.names.get(toHex(channel.key))}: ${text}` }),
      deviceLogOffered: (_channel, entries) => this.#takeLog(entries),
      // Every machine with a channel, or soon one (a handshake out), may be pushing or
      // answering a sync: each gets an equal share of what the relay holds for this browser.
      liveWindow: () =>
        windowFor([...this.channels.values()].filter((c) => c.channel !== null || c.handshake !== null).length),
    };
  }

  // --- the relay connection ---------------------------------------------------------

  #card() {
    return this.keys.card(Role.CONTROLLER, this.device ? this.device.name : "browser");
  }

  #onData(peer, body) {
    const hex = toHex(peer);
    const inbox = this.inboxes.get(hex);
    if (inbox) inbox.push(body);
    else if (this.channels.has(hex)) this.channels.get(hex).receive(body);
    else if (this.stranger) {
      // The owner that opened this browser's join code: its first message.
      this.#inbox(peer).push(body);
      this.stranger(peer);
    }
  }

  #firstPeer(timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.stranger = null;
        reject(new EngineError("no owner opened the code before it expired: show a fresh one"));
      }, timeoutMs);
      this.stranger = (peer) => {
        clearTimeout(timer);
        this.stranger = null;
        resolve({ peer, inbox: this.inboxes.get(toHex(peer)) });
      };
    });
  }

  #inbox(peer) {
    const inbox = new PeerInbox(peer);
    this.inboxes.set(toHex(peer), inbox);
    return inbox;
  }

  async #connectLoop() {
    let attempt = 0;
    while (!this.stopped) {
      this.store.dispatch({ type: "connection/state", state: "connecting" });
      let onClosed;
      const closed = new Promise((resolve) => {
        onClosed = resolve;
      });
      const link = new RelayLink({
        url: this.device.relayUrl,
        keys: this.keys,
        card: this.#card(),
        pinnedRelayKey: this.device.relayKey,
        handlers: {
          data: (peer, body) => this.#onData(peer, body),
          presence: (peer, message) => this.channels.get(toHex(peer))?.presence(message.online),
          notice: (message) => this.#notice(message),
          error: (peer) => this.channels.get(toHex(peer))?.linkLost(),
          closed: (code, reason) => onClosed({ code, reason }),
        },
      });
      let outcome;
      try {
        const auth = await link.connect();
        if (auth.status !== "controller") throw new EngineError(`the relay does not know this device (${auth.status})`);
        this.link = link;
        attempt = 0;
        this.store.dispatch({ type: "connection/state", state: "live" });
        await this.#refreshLog();
        await this.#refreshMachines();
        outcome = await closed;
      } catch (exc) {
        outcome = { code: exc instanceof LinkClosed ? exc.code : -1, reason: exc.message };
      }
      this.link = null;
      for (const channel of this.channels.values()) channel.linkLost();
      this.#publishMachines();
      if (outcome.code === DEVICE_REMOVED) {
        this.stopped = true;
        this.store.dispatch({ type: "connection/state", state: "offline", detail: "this device was removed from the account" });
        this.store.dispatch({ type: "notice/add", kind: "error", text: "This device was removed from the account by an owner." });
        return;
      }
      this.store.dispatch({ type: "connection/state", state: "offline", detail: outcome.reason || "" });
      await wait(BACKOFF_MS[Math.min(attempt++, BACKOFF_MS.length - 1)] * (0.75 + Math.random() / 2));
    }
  }

  async #refreshMachines() {
    const reply = await this.link.request("list-machines", {}, "machine-list");
    const lastSeen = {};
    for (const info of reply.machines) lastSeen[toHex(info.machine_key)] = info;
    for (const [hex, channel] of this.channels) {
      const info = lastSeen[hex];
      if (info && info.last_seen) {
        this.store.dispatch({ type: "machine/update", fingerprint: channel.card.fingerprint, fields: { lastSeen: info.last_seen * 1000 } });
      }
      if (info && info.online && !channel.online) channel.presence(true);
    }
    this.#publishMachines();
  }

  async #refreshLog() {
    const state = await this.link.request("get-device-log", { after_seq: -1 }, "device-log-state");
    if (state.entries.length) await this.#takeLog(state.entries);
    else if (!this.log && this.device.role === "owner") await this.#appendGenesis();
  }

  async #takeLog(encoded) {
    const entries = decodeEntries(encoded);
    if (!entries.length) return;
    const before = this.log ? this.log.head.seq : -1;
    try {
      this.log = this.log ? this.log.update(entries) : DeviceLog.verify(entries, { account: this.device.account });
    } catch (exc) {
      if (exc.kind === "stale") return; // we hold more: the sender catches up from us
      this.store.dispatch({ type: "notice/add", kind: "error", text: `refused a device log: ${exc.message}` });
      return;
    }
    if (this.log.head.seq === before) return;
    const me = this.log.device(this.keys.signPublic);
    if (me && me.role !== this.device.role) {
      this.device = { ...this.device, role: me.role };
      await idbPut("state", DEVICE_STATE, this.device);
    }
    await this.#saveLog();
    this.#publish();
    for (const channel of this.channels.values()) if (channel.live) channel.sendDeviceLog(this.log);
  }

  async #appendGenesis() {
    const log = DeviceLog.genesis(this.keys, this.#card(), this.device.account, { at: Date.now() / 1000 });
    await this.link.request("append-device-log", { entries: log.encode(), ticket: new Uint8Array(0) }, "device-log-appended");
    this.log = log;
    await this.#saveLog();
    this.#publish();
  }

  #notice(message) {
    if (message.event === "revoked" && message.subject.length === 32) this.#forgetMachine(toHex(message.subject));
    else if (message.event === "devices-changed" && this.link) this.#refreshLog().catch(() => {});
  }

  async #forgetMachine(hex) {
    const channel = this.channels.get(hex);
    if (!channel) return;
    this.channels.delete(hex);
    this.names.delete(hex);
    await this.#saveMachines();
    this.book.forgetMachine(channel.card.fingerprint);
    this.store.dispatch({ type: "machine/removed", fingerprint: channel.card.fingerprint });
    this.#save();
  }

  // --- becoming a device ------------------------------------------------------------

  async #becomeDevice(device, log, machines) {
    this.device = device;
    this.log = log;
    await idbPut("state", DEVICE_STATE, device);
    await this.#saveLog();
    for (const card of machines) this.#addMachine(card, card.name);
    await this.#saveMachines();
    this.#publish();
    this.#connectLoop();
  }

  async register(relayUrl, token, name) {
    const problem = relayUrlError(relayUrl);
    if (problem) throw new EngineError(problem);
    if (!token) throw new EngineError("the registration token is missing");
    if (this.device) throw new EngineError("this browser already is a device of an account");
    const card = this.keys.card(Role.CONTROLLER, name || "browser");
    const link = new RelayLink({ url: relayUrl, keys: this.keys, card });
    let device;
    try {
      const auth = await link.connect();
      if (auth.status !== "unregistered") throw new EngineError("this device's key already belongs to an account");
      const reply = await link.request("register-account", { token }, "account-registered");
      device = { relayUrl, relayKey: link.relayKey, account: reply.account, name: card.name, role: "owner" };
    } catch (exc) {
      if (exc instanceof RelayRefused) throw new EngineError(REFUSALS[exc.code] || exc.message);
      throw exc instanceof LinkClosed || exc instanceof EngineError ? exc : new EngineError(exc.message);
    } finally {
      link.close();
    }
    await this.#becomeDevice(device, null, []);
  }

  async joinByCode(text, name) {
    if (this.device) throw new EngineError("this browser already is a device of an account");
    const code = parseLinkCode(text);
    const card = this.keys.card(Role.CONTROLLER, name || "browser");
    const link = new RelayLink({ url: code.relayUrl, keys: this.keys, card, handlers: { data: (peer, body) => this.#onData(peer, body) } });
    let joined;
    try {
      await link.connect();
      joined = await joinAccount({
        link, keys: this.keys, card, code,
        inbox: (peer) => this.#inbox(peer),
        confirm: (comparison, inviter) => this.confirm("Link this browser", comparison, `Check that ${inviter} shows the same code.`),
      });
    } finally {
      this.inboxes.clear();
      link.close();
    }
    const device = { relayUrl: code.relayUrl, relayKey: link.relayKey, account: joined.account, name: card.name, role: code.role };
    await this.#becomeDevice(device, joined.log, joined.machines);
  }

  // Show a join code for `starmux devices add CODE` on an owner (no camera needed).
  async joinByShowing(relayUrl, name, { show, status }) {
    if (this.device) throw new EngineError("this browser already is a device of an account");
    const problem = relayUrlError(relayUrl);
    if (problem) throw new EngineError(problem);
    const card = this.keys.card(Role.CONTROLLER, name || "browser");
    const link = new RelayLink({ url: relayUrl, keys: this.keys, card, handlers: { data: (peer, body) => this.#onData(peer, body) } });
    let joined;
    try {
      await link.connect();
      joined = await joinByShowing({
        link, keys: this.keys, card, show, status,
        firstPeer: (ms) => this.#firstPeer(ms),
        confirm: (comparison, owner) => this.confirm("Link this browser", comparison, `Check that ${owner} shows the same code.`),
      });
    } catch (exc) {
      if (exc instanceof RelayRefused) throw new EngineError(REFUSALS[exc.code] || exc.message);
      throw exc;
    } finally {
      this.stranger = null;
      this.inboxes.clear();
      link.close();
    }
    const device = { relayUrl, relayKey: link.relayKey, account: joined.account, name: card.name, role: joined.role };
    await this.#becomeDevice(device, joined.log, joined.machines);
  }

  // --- machines ---------------------------------------------------------------------

  #requireLink() {
    if (!this.link || !this.link.open) throw new EngineError("not connected to the relay: wait until the connection is live");
    return this.link;
  }

  async pairMachine(text) {
    const link = this.#requireLink();
    const code = parsePairingCode(text);
    let paired;
    try {
      paired = await pairMachine({
        link, keys: this.keys, card: this.#card(), code,
        account: this.device.account, relayKey: this.device.relayKey,
        inbox: (peer) => this.#inbox(peer),
        confirm: (comparison, machine) => this.confirm("Pair this machine", comparison, `Check that ${machine} shows the same code.`),
        now: () => Date.now() / 1000,
      });
    } catch (exc) {
      throw exc instanceof FlowError ? new EngineError(exc.message) : exc;
    } finally {
      this.inboxes.clear();
    }
    this.#addMachine(paired.card, paired.name);
    await this.#saveMachines();
    this.#publishMachines();
    await this.#refreshMachines();
    return paired;
  }

  async revoke(fp) {
    const link = this.#requireLink();
    const channel = [...this.channels.values()].find((c) => c.card.fingerprint === fp);
    if (!channel) throw new EngineError("no such machine");
    const issuedAt = Date.now() / 1000;
    const signature = this.keys.sign(revokeTranscript(this.device.account, channel.key, issuedAt));
    try {
      await link.request("revoke-machine", { machine_key: channel.key, issued_at: issuedAt, signature }, "machine-revoked");
    } catch (exc) {
      throw new EngineError(exc instanceof RelayRefused ? REFUSALS[exc.code] || exc.message : exc.message);
    }
    await this.#forgetMachine(toHex(channel.key));
  }

  async removeDevice(fp) {
    const link = this.#requireLink();
    if (!this.log) throw new EngineError("this device holds no device log yet");
    const entry = this.log.devices.find((d) => d.fingerprint === fp);
    if (!entry) throw new EngineError("no such device");
    const [next, appended] = this.log.append(this.keys, "remove", entry.key, { at: Date.now() / 1000 });
    try {
      await link.request("append-device-log", { entries: encodeEntries([appended]), ticket: new Uint8Array(0) }, "device-log-appended");
    } catch (exc) {
      if (exc instanceof RelayRefused && exc.code === "log-moved") await this.#refreshLog();
      throw new EngineError(exc instanceof RelayRefused ? REFUSALS[exc.code] || exc.message : exc.message);
    }
    this.log = next;
    await this.#saveLog();
    this.#publish();
    for (const channel of this.channels.values()) if (channel.live) channel.sendDeviceLog(this.log);
  }

  // --- commands ---------------------------------------------------------------------

  #channelOf(fp) {
    const channel = [...this.channels.values()].find((c) => c.card.fingerprint === fp);
    if (!channel) throw new EngineError("no such machine");
    return channel;
  }

  async #command(fp, kind, fields) {
    const channel = this.#channelOf(fp);
    const ack = channel.submit(commandId(), APP.encode(kind, fields));
    const answer = await Promise.race([ack, wait(ACK_MS).then(() => null)]);
    if (answer === null) {
      const where = channel.live ? "has not answered yet" : "is not reachable now";
      throw new EngineError(`the machine ${where}; the command waits and goes out when it is live`);
    }
    if (!answer.ok) throw new EngineError(answer.hint ? `${answer.error} (${answer.hint})` : answer.error);
    return answer;
  }

  async decide(fp, checkpoint, approve, reason) {
    const channel = this.#channelOf(fp);
    const fields = decideCheckpoint(this.keys, channel.key, { checkpoint, approve, reason, decidedAt: Date.now() / 1000 });
    const started = performance.now();
    const answer = await this.#command(fp, "decide-checkpoint", fields);
    this.store.dispatch({ type: "metric/ack", ms: performance.now() - started });
    return answer;
  }

  async startSession(fp, { cwd, command, title }) {
    if (!fp) throw new EngineError("choose a machine");
    const argv = splitCommand(command);
    if (!argv.length) throw new EngineError("the command is empty");
    const session = sessionId();
    const fields = { session, argv, cwd: cwd || "~", title: title || argv.join(" ").slice(0, 80), env: {}, pty: false, attachments: [] };
    await this.#command(fp, "start-session", fields);
    return session;
  }

  async cancel(fp, session) {
    await this.#command(fp, "cancel-session", { session });
  }

  // --- notifications (web/app/notifications.js drives these) ---------------------

  // register-push, signed by this device: the relay keeps the subscription and
  // answers with its VAPID key (an empty endpoint removes it and only asks the key).
  async registerPush({ endpoint, p256dh, auth }) {
    if (!this.link || !this.link.open) throw new EngineError("not connected to the relay: wait until the connection is live");
    const issuedAt = Date.now() / 1000;
    const signature = this.keys.sign(subscriptionTranscript(this.link.relayKey, this.keys.signPublic, endpoint, p256dh, auth, issuedAt));
    const reply = await this.link.request("register-push", { endpoint, p256dh, auth, issued_at: issuedAt, signature }, "push-registered");
    return reply.vapid_public_key;
  }

  // The same command to every paired machine: [{fingerprint, name, ok, error}].
  async commandAll(kind, fields) {
    return Promise.all([...this.channels.entries()].map(async ([hex, channel]) => {
      const fp = channel.card.fingerprint;
      try {
        await this.#command(fp, kind, fields);
        return { fingerprint: fp, name: this.names.get(hex), ok: true };
      } catch (exc) {
        return { fingerprint: fp, name: this.names.get(hex), ok: false, error: exc.message };
      }
    }));
  }

  // A decision the service worker signed (a notification's Approve/Deny): sent like
  // any decision, through the machine's outbox.
  // `id`: the command id the worker chose, the same on every resend.
  submitSigned(machineHex, fields, id) {
    const channel = this.channels.get(machineHex);
    if (!channel) return null;
    return channel.submit(id || commandId(), APP.encode("decide-checkpoint", fields));
  }

  // Tell the machine this device shows `session` in the foreground until `until`
  // (seconds): it is not pushed about it meanwhile. A channel message, not a command.
  viewing(fp, session, until) {
    const channel = [...this.channels.values()].find((c) => c.card.fingerprint === fp);
    if (channel && channel.live) channel.message("viewing", { session, until });
  }

  watchOutput(fp, session, callback) {
    return this.book.watch(fp, session, callback);
  }
}

// A command line split like a POSIX shell's words: quotes group, backslash escapes.
export function splitCommand(text) {
  const words = [];
  let word = null;
  let quote = null;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quote) {
      if (ch === quote) quote = null;
      else if (ch === "\\" && quote === '"' && i + 1 < text.length) word += text[++i];
      else word += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      word = word ?? "";
    } else if (ch === "\\" && i + 1 < text.length) {
      word = (word ?? "") + text[++i];
    } else if (/\s/.test(ch)) {
      if (word !== null) words.push(word);
      word = null;
    } else {
      word = (word ?? "") + ch;
    }
  }
  if (quote) throw new EngineError("the command has an unclosed quote");
  if (word !== null) words.push(word);
  return words;
}

