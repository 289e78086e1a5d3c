// Building DOM without HTML strings: every string becomes a text node.
//
// Machines, relays and other devices supply names, titles, output and reasons;
// none of it is ever parsed as HTML. h() only sets properties from an allowlist
// and attaches listeners given as functions, so a view cannot slip into
// innerHTML by accident.

const PROPS = new Set([
  "id", "className", "type", "name", "value", "placeholder", "title", "htmlFor",
  "disabled", "checked", "hidden", "autocomplete", "inputMode", "spellcheck", "required",
  "accept", "capture", "rows", "maxLength", "min", "max", "tabIndex", "href", "src", "alt",
  "role", "open", "playsInline", "muted", "autoplay", "width", "height",
]);

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key.startsWith("aria-")) {
      el.setAttribute(key, String(value));
    } else if (PROPS.has(key)) {
      el[key] = value;
    } else {
      throw new Error(`h(): property ${key} is not allowed`);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// Text from a machine, made safe to show: control characters (terminal escapes
// included) become visible, and very long values are cut.
export function machineText(value, limit = 500) {
  const text = String(value ?? "");
  // eslint-disable-next-line no-control-regex
  const shown = text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, "\ufffd");
  return shown.length > limit ? `${shown.slice(0, limit)}…` : shown;
}

export function ago(ms, now = Date.now()) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

// Terminal output as plain text: colour and cursor sequences dropped, CR LF as
// LF, any other control character made visible.
export function outputText(text) {
  // eslint-disable-next-line no-control-regex
  const plain = text.replace(/\u001b\[[0-9;?]*[ -/]*[@-~]/g, "").replace(/\r\n/g, "\n").replace(/\r/g, "");
  return machineText(plain, Infinity);
}

const STATUS_TEXT = { waiting_approval: "waiting for approval" };

// A session status as people say it.
export function statusText(status) {
  return STATUS_TEXT[status] || String(status || "").replace(/_/g, " ");
}
