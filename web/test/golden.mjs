// tests/data/web-golden.json: wire tables made by the Python core (tests/web_golden.py).
import { readFileSync } from 'node:fs';

export const GOLDEN = JSON.parse(readFileSync(new URL('../../tests/data/web-golden.json', import.meta.url), 'utf8'));
