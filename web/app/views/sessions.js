// Sessions across machines, and one session's live output in a terminal renderer.
import { ago, h, machineText, replace } from "../dom.js";

const ACTIVE = new Set(["queued", "running", "waiting_approval"]);

export function sessionsView(ctx) {
  const list = h("ul", { className: "list", id: "session-list", "aria-label": "Sessions" });
  const empty = h("p", { className: "muted" }, "No sessions yet. Start one from “Start”.");
  const el = h("div", {}, h("h1", {}, "Sessions"), empty, list);

  function update(state) {
    const rows = [];
    for (const [fp, m] of Object.entries(state.machines)) {
      for (const s of Object.values(m.sessions || {})) rows.push({ fp, machine: m, session: s });
    }
    rows.sort((a, b) => (b.session.updated || 0) - (a.session.updated || 0));
    empty.hidden = rows.length > 0;
    replace(list, rows.map(({ fp, machine, session }) =>
      h("li", { className: "card", dataset: { session: session.id } },
        h("div", { className: "row" },
          h("div", { className: "grow" },
            h("div", { className: "name" }, machineText(session.title || session.command, 120)),
            h("div", { className: "meta" }, `${machineText(machine.name, 60)} · ${session.status} · ${ago(session.updated)}`),
            h("div", { className: "meta mono" }, machineText(session.cwd, 120))),
          h("button", { type: "button", on: { click: () => ctx.actions.show("session", { machine: fp, session: session.id }) } }, "Watch"),
          ACTIVE.has(session.status) ? h("button", { type: "button", className: "danger", on: { click: () => ctx.actions.cancel(fp, session.id) } }, "Cancel") : null))));
  }
  return { el, update };
}

export function sessionView(ctx) {
  const { machine, session } = ctx.store.state.selected || {};
  const title = h("h1", {}, "Session");
  const meta = h("p", { className: "meta" });
  const screen = h("div", { className: "terminal", id: "terminal", role: "log", "aria-label": "Session output" });
  const el = h("div", {},
    h("button", { type: "button", on: { click: () => ctx.actions.show("sessions") } }, "← Sessions"),
    title, meta, screen);
  const detach = ctx.actions.attachTerminal(machine, session, screen);

  function update(state) {
    const m = state.machines[machine];
    const s = m && m.sessions && m.sessions[session];
    title.textContent = s ? machineText(s.title || s.command, 120) : "Session";
    meta.textContent = s ? `${machineText(m.name, 60)} · ${s.status} · ${machineText(s.cwd, 120)}` : "";
  }
  return { el, update, close: detach };
}
