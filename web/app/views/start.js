// Starting a session on a machine: machine, working directory, command, title.
import { h, machineText, replace } from "../dom.js";

export function startView(ctx) {
  const machine = h("select", { id: "start-machine" });
  const cwd = h("input", { id: "start-cwd", placeholder: "~/src/project", autocomplete: "off", spellcheck: false });
  const command = h("input", { id: "start-command", placeholder: "claude -p \"fix the failing tests\"", autocomplete: "off", spellcheck: false });
  const title = h("input", { id: "start-title", placeholder: "fix tests", autocomplete: "off", maxLength: 120 });
  const status = h("p", { className: "meta", id: "start-status", role: "status" });
  const start = async () => {
    status.textContent = "Starting…";
    try {
      await ctx.actions.startSession(machine.value, { cwd: cwd.value.trim(), command: command.value.trim(), title: title.value.trim() });
      status.textContent = "Started.";
    } catch (exc) {
      status.textContent = exc.message;
    }
  };
  const el = h("div", {}, h("h1", {}, "Start a session"),
    h("section", { className: "card" },
      h("label", { htmlFor: "start-machine" }, "Machine"), machine,
      h("label", { htmlFor: "start-cwd" }, "Working directory"), cwd,
      h("label", { htmlFor: "start-command" }, "Command"), command,
      h("label", { htmlFor: "start-title" }, "Title"), title,
      h("div", { className: "actions" }, h("button", { type: "button", className: "primary", id: "start-button", on: { click: start } }, "Start")),
      status));
  let shown = "";
  function update(state) {
    const names = Object.entries(state.machines).map(([fp, m]) => [fp, machineText(m.name, 60)]);
    const key = JSON.stringify(names);
    if (key === shown) return;
    shown = key;
    const keep = machine.value;
    replace(machine, names.length ? names.map(([fp, name]) => h("option", { value: fp }, name)) : h("option", { value: "", disabled: true }, "no machines paired yet"));
    if (keep) machine.value = keep;
  }
  return { el, update };
}
