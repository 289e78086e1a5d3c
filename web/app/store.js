// The one state store. Protocol events and user actions go in through
// dispatch(event); views read the state and re-render on change. The reducer is
// a table of pure functions keyed by event type, like the Python core's
// transition tables: an unknown event type is a bug and throws.

export const initialState = Object.freeze({
  code: { pinned: null, offered: null, locked: true, checked: false, error: null },
  keys: "absent", // absent | locked | unlocked
  device: null, // { name, fingerprint, role, account } once this browser is a device
  connection: { state: "idle", since: Date.now(), detail: "" }, // idle|connecting|live|offline
  machines: {}, // fingerprint -> { name, online, lastSeen, sessions: {id: session} }
  approvals: {}, // `${machine}/${checkpoint}` -> { machine, id, title, body, expires, decided }
  devices: [], // the account's devices (from the device log)
  notices: [], // { id, kind: info|error, text }
  prompt: null, // { id, title, code, detail }: the person compares a code
  lastAckMs: null, // how long the newest command took to be acked
  view: "machines",
  selected: null, // { machine, session } for the session screen
});

let nextNotice = 1;

const reducers = {
  "code/status": (s, e) => ({
    ...s,
    code: { ...e.status },
    keys: s.keys === "unlocked" && e.status.locked ? "locked" : s.keys,
  }),
  "keys/state": (s, e) => ({ ...s, keys: e.keys }),
  "device/set": (s, e) => ({ ...s, device: e.device }),
  "connection/state": (s, e) =>
    s.connection.state === e.state && s.connection.detail === (e.detail || "")
      ? s
      : { ...s, connection: { state: e.state, since: e.at ?? Date.now(), detail: e.detail || "" } },
  "machines/set": (s, e) => ({ ...s, machines: e.machines }),
  "machine/update": (s, e) => ({
    ...s,
    machines: { ...s.machines, [e.fingerprint]: { ...(s.machines[e.fingerprint] || { sessions: {} }), ...e.fields } },
  }),
  "machine/removed": (s, e) => {
    const machines = { ...s.machines };
    delete machines[e.fingerprint];
    const approvals = Object.fromEntries(Object.entries(s.approvals).filter(([, a]) => a.machine !== e.fingerprint));
    return { ...s, machines, approvals };
  },
  "approval/raised": (s, e) => ({ ...s, approvals: { ...s.approvals, [`${e.approval.machine}/${e.approval.id}`]: e.approval } }),
  "approval/decided": (s, e) => {
    const key = `${e.machine}/${e.id}`;
    if (!s.approvals[key]) return s;
    return { ...s, approvals: { ...s.approvals, [key]: { ...s.approvals[key], decided: e.decided } } };
  },
  "devices/set": (s, e) => ({ ...s, devices: e.devices }),
  "notice/add": (s, e) => ({ ...s, notices: [...s.notices.slice(-4), { id: nextNotice++, kind: e.kind, text: e.text }] }),
  "notice/dismiss": (s, e) => ({ ...s, notices: s.notices.filter((n) => n.id !== e.id) }),
  "prompt/set": (s, e) => ({ ...s, prompt: e.prompt }),
  "metric/ack": (s, e) => ({ ...s, lastAckMs: e.ms }),
  "view/show": (s, e) => ({ ...s, view: e.view, selected: e.selected ?? s.selected }),
};

export class Store {
  constructor(state = initialState) {
    this.state = state;
    this.listeners = new Set();
  }

  dispatch(event) {
    const reducer = reducers[event.type];
    if (!reducer) throw new Error(`store: unknown event ${event.type}`);
    const next = reducer(this.state, event);
    if (next === this.state) return;
    this.state = next;
    for (const listener of this.listeners) listener(next);
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
