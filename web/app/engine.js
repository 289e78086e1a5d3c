// The protocol engine: this device's relay connection and what arrives on it,
// turned into store events. It uses the protocol modules in web/proto/ and never
// touches the DOM; the views call it through main.js's actions.
//
// Invariants:
// - One relay connection at a time; when it drops, the engine reconnects with
//   capped, jittered backoff and says so in the store (connecting / live /
//   offline since T), so the connection state is always visible.
// - The relay's key is pinned at first contact (or taken from a link code's
//   fingerprint); a different key later refuses the connection.
// - Nothing a machine or the relay says is trusted for identity: machine cards
//   come from pairing or an owner's link welcome, never from the relay's list.

import { toHex } from "../proto/bytes.js";
import { fingerprint } from "../proto/fingerprint.js";
import { decodeCard, NodeKeys, Role } from "../proto/identity.js";
import { idbGet, idbPut } from "./idb.js";
import { LinkClosed, RelayLink, RelayRefused } from "./net/relay_link.js";

export class EngineError extends Error {}

const DEVICE_STATE = "device"; // IndexedDB "state" store: this device's account facts
const MACHINES_STATE = "machines"; // the machines' cards, by hex key
const BACKOFF_MS = [250, 1000, 2000, 5000, 10000, 20000];
const NOT_YET = "this build of the web app cannot do this yet: use the CLI for this step";
const REFUSALS = {
  "bad-token": "the relay refused the registration token (it is one-time: use the one the relay printed)",
  exists: "this device already has an account on that relay",
  "rate-limited": "the relay is rate limiting registrations from this address: try again in a minute",
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

export class Engine {
  constructor(store) {
    this.store = store;
    this.keys = null;
    this.device = null; // { relayUrl, relayKey, account, name, role }
    this.machines = new Map(); // hex sign key -> { card }
    this.link = null;
    this.stopped = false;
    this.attempt = 0;
  }

  // --- start-up ---------------------------------------------------------------

  async start(secrets) {
    this.keys = new NodeKeys(secrets.slice(0, 32), secrets.slice(32, 64));
    this.device = (await idbGet("state", DEVICE_STATE)) || null;
    for (const [hex, encoded] of Object.entries((await idbGet("state", MACHINES_STATE)) || {})) {
      this.machines.set(hex, { card: decodeCard(encoded) });
    }
    this.#publishDevice();
    this.#publishMachines();
    if (this.device) this.#connectLoop();
  }

  get fingerprint() {
    return this.keys ? this.keys.fingerprint : "";
  }

  #publishDevice() {
    const d = this.device;
    this.store.dispatch({
      type: "device/set",
      device: {
        name: d ? d.name : "",
        fingerprint: this.keys.fingerprint,
        role: d ? d.role : "",
        account: d ? toHex(d.account) : null,
        relayUrl: d ? d.relayUrl : "",
      },
    });
    if (d) this.store.dispatch({ type: "devices/set", devices: [{ name: d.name, role: d.role, fingerprint: this.keys.fingerprint }] });
  }

  #publishMachines(online = {}) {
    const machines = {};
    const known = this.store.state.machines;
    for (const [hex, { card }] of this.machines) {
      const before = known[card.fingerprint] || { sessions: {} };
      machines[card.fingerprint] = { ...before, name: card.name, key: hex, ...(online[hex] || {}) };
    }
    this.store.dispatch({ type: "machines/set", machines });
  }

  // --- the relay connection ---------------------------------------------------

  #card() {
    return this.keys.card(Role.CONTROLLER, this.device ? this.device.name : "browser");
  }

  #handlers() {
    return {
      presence: (peer, message) => this.#presence(peer, message),
      notice: (message) => this.#notice(message),
      data: () => {},
      error: () => {},
    };
  }

  async #connectLoop() {
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
        handlers: { ...this.#handlers(), closed: (code, reason) => onClosed({ code, reason }) },
      });
      try {
        const auth = await link.connect();
        if (auth.status !== "controller") throw new EngineError(`the relay does not know this device (${auth.status})`);
        this.link = link;
        this.attempt = 0;
        this.store.dispatch({ type: "connection/state", state: "live" });
        await this.#refreshMachines();
        const { code, reason } = await closed;
        this.link = null;
        this.store.dispatch({ type: "connection/state", state: "offline", detail: `${code} ${reason || ""}`.trim() });
        this.#markAllOffline();
      } catch (exc) {
        this.link = null;
        this.store.dispatch({ type: "connection/state", state: "offline", detail: exc.message });
        this.#markAllOffline();
      }
      const wait = BACKOFF_MS[Math.min(this.attempt++, BACKOFF_MS.length - 1)];
      await new Promise((resolve) => setTimeout(resolve, wait * (0.75 + Math.random() / 2)));
    }
  }

  #markAllOffline() {
    for (const [fp, m] of Object.entries(this.store.state.machines)) {
      if (m.online) this.store.dispatch({ type: "machine/update", fingerprint: fp, fields: { online: false, lastSeen: Date.now() } });
    }
  }

  async #refreshMachines() {
    const reply = await this.link.request("list-machines", {}, "machine-list");
    const online = {};
    for (const info of reply.machines) {
      const hex = toHex(info.machine_key);
      online[hex] = { online: info.online, lastSeen: info.last_seen ? info.last_seen * 1000 : null };
    }
    this.#publishMachines(online);
  }

  #presence(peer, message) {
    const hex = toHex(peer);
    const known = this.machines.get(hex);
    if (!known) return;
    this.store.dispatch({
      type: "machine/update",
      fingerprint: known.card.fingerprint,
      fields: { online: message.online, lastSeen: message.at * 1000 },
    });
  }

  #notice(message) {
    if (message.event === "revoked" && message.subject.length === 32) {
      this.#forgetMachine(toHex(message.subject));
    }
  }

  async #forgetMachine(hex) {
    const known = this.machines.get(hex);
    if (!known) return;
    this.machines.delete(hex);
    await this.#saveMachines();
    this.store.dispatch({ type: "machine/removed", fingerprint: known.card.fingerprint });
  }

  async #saveMachines() {
    const all = {};
    for (const [hex, { card }] of this.machines) all[hex] = card.encoded;
    await idbPut("state", MACHINES_STATE, all);
  }

  // --- becoming a device --------------------------------------------------------

  async register(relayUrl, token, name) {
    const problem = relayUrlError(relayUrl);
    if (problem) throw new EngineError(problem);
    if (!token) throw new EngineError("the registration token is missing");
    if (this.device) throw new EngineError("this browser already is a device of an account");
    const link = new RelayLink({ url: relayUrl, keys: this.keys, card: this.keys.card(Role.CONTROLLER, name || "browser") });
    try {
      const auth = await link.connect();
      if (auth.status !== "unregistered") throw new EngineError("this device's key already belongs to an account");
      const reply = await link.request("register-account", { token }, "account-registered");
      this.device = { relayUrl, relayKey: link.relayKey, account: reply.account, name: name || "browser", role: "owner" };
    } catch (exc) {
      if (exc instanceof RelayRefused) throw new EngineError(REFUSALS[exc.code] || exc.message);
      throw exc instanceof LinkClosed || exc instanceof EngineError ? exc : new EngineError(exc.message);
    } finally {
      link.close();
    }
    await idbPut("state", DEVICE_STATE, this.device);
    this.#publishDevice();
    this.#connectLoop();
    return fingerprint(this.device.relayKey);
  }

  async link(_code, _name) { throw new EngineError(NOT_YET); }
  async pairMachine(_code) { throw new EngineError(NOT_YET); }
  async decide(_machine, _checkpoint, _approve, _reason) { throw new EngineError(NOT_YET); }
  async startSession(_machine, _spec) { throw new EngineError(NOT_YET); }
  async cancel(_machine, _session) { throw new EngineError(NOT_YET); }
  async revoke(_machine) { throw new EngineError(NOT_YET); }
  async removeDevice(_device) { throw new EngineError(NOT_YET); }
  attachTerminal(_machine, _session, _element) { return () => {}; }
}
