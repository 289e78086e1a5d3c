// Vendored third-party code: copy it from the locked packages, or prove it matches them.
//
//   node web/tools/vendor.mjs update   copy from web/node_modules (after `npm ci` in web/)
//   node web/tools/vendor.mjs check    install the locked packages afresh into a temporary
//                                      folder (`npm ci`: npm checks every tarball against the
//                                      sha512 integrity in package-lock.json) and fail unless
//                                      web/vendor/ holds exactly the files `update` would copy,
//                                      byte for byte
//
// What is vendored: the ES modules reachable from ENTRIES below by their static imports
// (nothing else of the packages: no tests, sources, maps or typings), each package's
// package.json (Node resolves the packages' bare imports through its "exports") and its
// licence. The layout is web/vendor/node_modules/<package>/<path>, so that
//   - in Node (the protocol tests) a vendored file's bare import such as
//     '@noble/hashes/sha2.js' resolves to the vendored copy by Node's own rules;
//   - in the browser the page's import map sends the same bare prefixes there:
//     {"imports": {"@noble/hashes/": "./vendor/node_modules/@noble/hashes/", ...}}
//     (IMPORT_MAP below lists them; the app's HTML carries it).
// Our own modules (web/proto/) import vendored files by relative path, which works in both.
//
// Only Node's standard library: the check runs in the README's test command.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const VENDOR = path.join(WEB, 'vendor', 'node_modules');

/** Entry files per package: what our code (web/proto, web/app) imports or loads. */
export const ENTRIES = {
  '@noble/curves': ['ed25519.js'], // X25519, Ed25519
  '@noble/ciphers': ['chacha.js', 'salsa.js'], // ChaCha20-Poly1305; XSalsa20-Poly1305 (push sealed boxes)
  '@noble/hashes': ['blake2.js', 'hmac.js', 'utils.js', 'sha2.js'], // BLAKE2b, HMAC
  '@msgpack/msgpack': ['dist.esm/index.mjs'],
  '@xterm/xterm': ['lib/xterm.mjs', 'css/xterm.css'],
  // A classic script (UMD, sets globalThis.jsQR): load it with <script src> or
  // importScripts(), not import.
  jsqr: ['dist/jsQR.js'],
  // Drawing this browser's join code as a QR for `starmux devices add` (an ES module).
  'qrcode-generator': ['dist/qrcode.mjs'],
};

/** Bare import prefixes that vendored files use, for the browser's import map. */
export const IMPORT_MAP = {
  imports: {
    '@noble/hashes/': './vendor/node_modules/@noble/hashes/',
    '@noble/curves/': './vendor/node_modules/@noble/curves/',
    '@noble/ciphers/': './vendor/node_modules/@noble/ciphers/',
  },
};

const LICENCES = ['LICENSE', 'LICENSE.md', 'LICENSE.txt'];
const IMPORT_RE = /^\s*(?:import|export)\s(?:[^'"]*?\sfrom\s)?['"]([^'"]+)['"]/gm;

function splitBare(spec) {
  const parts = spec.split('/');
  const name = spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
  return { name, subpath: '.' + spec.slice(name.length) };
}

function resolveExport(root, name, subpath) {
  const manifest = JSON.parse(fs.readFileSync(path.join(root, name, 'package.json'), 'utf8'));
  const target = manifest.exports?.[subpath];
  if (typeof target !== 'string') {
    throw new Error(`${name} does not export ${subpath} as a plain file`);
  }
  return path.posix.normalize(target.replace(/^\.\//, ''));
}

/** Every file to vendor, as "<package>/<path>" relative to a node_modules folder. */
export function closure(root) {
  const files = new Set();
  const queue = [];
  for (const [name, entries] of Object.entries(ENTRIES)) {
    for (const extra of ['package.json', ...LICENCES]) {
      if (fs.existsSync(path.join(root, name, extra))) files.add(`${name}/${extra}`);
    }
    for (const entry of entries) queue.push(`${name}/${entry}`);
  }
  while (queue.length > 0) {
    const file = queue.pop();
    if (files.has(file)) continue;
    files.add(file);
    if (!/\.m?js$/.test(file) || file.endsWith('jsQR.js')) continue;
    const text = fs.readFileSync(path.join(root, file), 'utf8');
    const { name } = splitBare(file);
    for (const match of text.matchAll(IMPORT_RE)) {
      const spec = match[1];
      if (spec.startsWith('.')) {
        queue.push(path.posix.normalize(path.posix.join(path.posix.dirname(file), spec)));
      } else {
        const bare = splitBare(spec);
        if (!(bare.name in ENTRIES)) {
          throw new Error(`${file} imports ${spec}: not a locked dependency (${name})`);
        }
        queue.push(`${bare.name}/${resolveExport(root, bare.name, bare.subpath)}`);
      }
    }
  }
  return [...files].sort();
}

function listFiles(dir, prefix = '') {
  if (!fs.existsSync(dir)) return [];
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...listFiles(path.join(dir, entry.name), rel));
    else out.push(rel);
  }
  return out.sort();
}

function sha256(file) {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function update() {
  const root = path.join(WEB, 'node_modules');
  if (!fs.existsSync(root)) throw new Error('run `npm ci` in web/ first');
  fs.rmSync(VENDOR, { recursive: true, force: true });
  const files = closure(root);
  for (const file of files) {
    fs.mkdirSync(path.dirname(path.join(VENDOR, file)), { recursive: true });
    fs.copyFileSync(path.join(root, file), path.join(VENDOR, file));
  }
  console.log(`vendored ${files.length} files into ${path.relative(process.cwd(), VENDOR)}`);
}

function installLocked() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'starmux-vendor-'));
  fs.copyFileSync(path.join(WEB, 'package.json'), path.join(tmp, 'package.json'));
  fs.copyFileSync(path.join(WEB, 'package-lock.json'), path.join(tmp, 'package-lock.json'));
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  try {
    execFileSync(
      npm,
      ['ci', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'],
      { cwd: tmp, stdio: ['ignore', 'ignore', 'inherit'] },
    );
  } catch (error) {
    if (error.code === 'ENOENT') {
      throw new Error('npm not found: install Node.js 20.19+ with npm (Debian: apt-get install nodejs npm)');
    }
    throw new Error(`npm ci of web/package-lock.json failed (${error.message})`);
  }
  return tmp;
}

function check() {
  const tmp = installLocked();
  try {
    const root = path.join(tmp, 'node_modules');
    const expected = closure(root);
    const present = listFiles(VENDOR);
    const problems = [];
    for (const file of expected) {
      if (!present.includes(file)) problems.push(`missing: ${file}`);
      else if (sha256(path.join(VENDOR, file)) !== sha256(path.join(root, file))) {
        problems.push(`differs from the locked package: ${file}`);
      }
    }
    for (const file of present) {
      if (!expected.includes(file)) problems.push(`not from a locked package: ${file}`);
    }
    const locked = JSON.parse(fs.readFileSync(path.join(WEB, 'package-lock.json'), 'utf8'));
    for (const name of Object.keys(ENTRIES)) {
      const version = locked.packages[`node_modules/${name}`]?.version;
      console.log(`${name}@${version}`);
    }
    if (problems.length > 0) {
      console.error(problems.join('\n'));
      console.error('web/vendor does not match web/package-lock.json: run `npm ci` and ' +
        '`node tools/vendor.mjs update` in web/, and review the diff');
      process.exitCode = 1;
      return;
    }
    console.log(`web/vendor: ${present.length} files, byte-identical to the locked packages`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

const command = process.argv[2];
if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    if (command === 'update') update();
    else if (command === 'check') check();
    else {
      console.error('usage: node web/tools/vendor.mjs update|check');
      process.exitCode = 2;
    }
  } catch (error) {
    console.error(`vendor: ${error.message}`);
    process.exitCode = 1;
  }
}
