// Sessions across machines, and one session's live output in a terminal renderer.
import { Terminal } from "../../vendor/node_modules/@xterm/xterm/lib/xterm.mjs";
import { ago, h, machineText, outputText, replace, statusText } from "../dom.js";

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
        h("div", { className: "name" }, machineText(session.title || session.command, 80)),
        h("div", { className: "meta" }, `${machineText(machine.name, 60)} · ${statusText(session.status)} · ${ago(session.updated)}`),
        h("div", { className: "meta mono" }, machineText(session.cwd, 120)),
        h("div", { className: "actions" },
          h("button", { type: "button", on: { click: () => ctx.actions.show("session", { machine: fp, session: session.id }) } }, "Watch"),
          ACTIVE.has(session.status) ? h("button", { type: "button", className: "danger", on: { click: () => ctx.actions.cancel(fp, session.id) } }, "Cancel") : null))));
  }
  return { el, update };
}

// One session's output: a terminal (xterm.js, vendored) or, for copying and
// screen readers, the same bytes as plain text. Output bytes go to xterm as they
// came (it is the terminal: escapes are its job, and it cannot run script); the
// text view shows them as text, control characters made visible.
export function sessionView(ctx) {
  const { machine, session } = ctx.store.state.selected || {};
  const title = h("h1", {}, "Session");
  const meta = h("p", { className: "meta", id: "session-meta" });
  const screen = h("div", { className: "terminal", id: "terminal", "aria-hidden": "true" });
  const text = h("pre", { className: "output-text", id: "output-text", role: "log", "aria-label": "Session output", hidden: true, tabIndex: 0 });
  const decoder = new TextDecoder();
  const terminal = new Terminal({ convertEol: true, disableStdin: true, scrollback: 10000, fontSize: 13, cursorBlink: false });
  const mode = (showText) => {
    screen.hidden = showText;
    text.hidden = !showText;
    terminalButton.setAttribute("aria-pressed", String(!showText));
    textButton.setAttribute("aria-pressed", String(showText));
  };
  const terminalButton = h("button", { type: "button", "aria-pressed": "true", on: { click: () => mode(false) } }, "Terminal");
  const textButton = h("button", { type: "button", id: "show-text", "aria-pressed": "false", on: { click: () => mode(true) } }, "Text");
  const cancel = h("button", { type: "button", className: "danger", id: "cancel-session", hidden: true, on: { click: () => ctx.actions.cancel(machine, session) } }, "Cancel session");
  const el = h("div", {},
    h("div", { className: "row" },
      h("button", { type: "button", on: { click: () => ctx.actions.show("sessions") } }, "← Sessions"),
      h("div", { className: "segmented", role: "group", "aria-label": "Output view" }, terminalButton, textButton)),
    title, meta, screen, text,
    h("div", { className: "actions" }, cancel));
  let opened = false;
  const detach = ctx.actions.watchOutput(machine, session, (chunk) => {
    terminal.write(chunk);
    text.append(document.createTextNode(outputText(decoder.decode(chunk, { stream: true }))));
    if (!text.hidden) text.scrollTop = text.scrollHeight;
  });
  queueMicrotask(() => {
    if (!opened && screen.isConnected) {
      terminal.open(screen);
      opened = true;
    }
  });

  function update(state) {
    const m = state.machines[machine];
    const s = m && m.sessions && m.sessions[session];
    title.textContent = s ? machineText(s.title || s.command, 120) : "Session";
    meta.textContent = s ? `${machineText(m.name, 60)} · ${statusText(s.status)} · ${machineText(s.cwd, 120)}` : "";
    cancel.hidden = !s || !ACTIVE.has(s.status);
  }
  return {
    el,
    update,
    close: () => {
      detach();
      terminal.dispose();
    },
  };
}
