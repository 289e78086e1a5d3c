// The protocol engine: the relay connection, channels to machines and devices,
// turning protocol events into store events. It uses the protocol modules in
// web/proto/ (Noise, frames, codec, relay auth, pairing and link codes, device log)
// and never touches the DOM; the views call it through main.js's actions.
//
// This build has the device keys and the screens; the relay connection is the
// next layer (see the closing note of issue 15). Until it lands every network
// action says so plainly instead of pretending.

export class EngineError extends Error {}

const NOT_YET = "this build of the web app cannot reach the relay yet: use the CLI for this step";

export class Engine {
  constructor(store) {
    this.store = store;
    this.secrets = null;
  }

  start(secrets) {
    this.secrets = secrets;
    const device = this.store.state.device;
    this.store.dispatch({ type: "connection/state", state: device && device.account ? "connecting" : "idle" });
  }

  async link(_code, _name) { throw new EngineError(NOT_YET); }
  async register(_relayUrl, _token, _name) { throw new EngineError(NOT_YET); }
  async pairMachine(_code) { throw new EngineError(NOT_YET); }
  async decide(_machine, _checkpoint, _approve, _reason) { throw new EngineError(NOT_YET); }
  async startSession(_machine, _spec) { throw new EngineError(NOT_YET); }
  async cancel(_machine, _session) { throw new EngineError(NOT_YET); }
  async revoke(_machine) { throw new EngineError(NOT_YET); }
  async removeDevice(_device) { throw new EngineError(NOT_YET); }
  attachTerminal(_machine, _session, _element) { return () => {}; }
}
