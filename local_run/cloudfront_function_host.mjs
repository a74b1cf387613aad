// Runs a CloudFront Functions (cloudfront-js-2.0) viewer-request function file, unchanged
// on disk, under Node.js: for the tests, the local run and the benchmark.
//
//   node local_run/cloudfront_function_host.mjs --function FILE --key-store-file STORE.json
//       one event per stdin line (JSON) -> one stdout line: the function's result (the
//       request or a response object), or {"error": {"type", "message"}} when the
//       line is not JSON or the function throws (CloudFront would answer 503).
//   ... --bench N    stdin lines {"label", "event"}; prints one JSON line of per-label
//       timings (microseconds) of N calls each, taken around the handler call only.
//
// The function's `import x from 'cloudfront' | 'crypto'` lines become reads of stand-ins
// (same line count, so stack traces point at the real file), and the code runs in its own
// vm context holding only what the runtime offers here (console, Buffer): a use of
// require, process, timers or fetch fails here as it would at the edge.
// The key store stand-in for cf.kvs() is a JSON file {"<key>": "<value string>"}, re-read
// whenever it is replaced or changes, so a running local server sees keys added or
// revoked by `bin/api-keys --local` without a restart.

import { createHash, createHmac } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import vm from 'node:vm';

const IMPORT_LINE = /^\s*import\s+([A-Za-z_$][\w$]*)\s+from\s+(['"])([\w-]+)\2\s*;?\s*$/;
const MODULE_LINE = /^\s*(import|export)\b/;

class KeyStoreError extends Error {}

// cf.kvs() stand-in backed by a JSON file. `watch` false: read once (the benchmark, so
// that its figures are the function's time, not this file's stat calls).
class FileKeyValueStore {
    constructor(path, watch) {
        this.path = path;
        this.watch = watch;
        this.stamp = undefined;
        this.entries = null;
        this.failure = null;
    }

    current() {
        if (this.stamp !== undefined && !this.watch) return this.read();
        let stamp;
        try {
            const st = statSync(this.path, { bigint: true });
            // os.replace gives a new inode; an in-place edit changes size or mtime.
            stamp = `${st.ino}:${st.size}:${st.mtimeNs}`;
        } catch (e) {
            if (e.code !== 'ENOENT') throw new KeyStoreError(`key store ${this.path}: ${e.message}`);
            stamp = 'absent';
        }
        if (stamp !== this.stamp) this.load(stamp);
        return this.read();
    }

    load(stamp) {
        this.stamp = stamp;
        this.entries = null;
        this.failure = null;
        if (stamp === 'absent') {
            this.entries = new Map(); // no file yet: a store with no keys
            return;
        }
        try {
            const data = JSON.parse(readFileSync(this.path, 'utf8'));
            if (!data || typeof data !== 'object' || Array.isArray(data)) throw new Error('not a JSON object');
            for (const [key, value] of Object.entries(data)) {
                if (typeof value !== 'string') throw new Error(`value of ${key.slice(0, 12)}... is not a string`);
            }
            this.entries = new Map(Object.entries(data));
        } catch (e) {
            this.failure = new KeyStoreError(`key store ${this.path} unreadable: ${e.message}`);
        }
    }

    read() {
        if (this.failure) throw this.failure;
        return this.entries;
    }

    // The helper methods of the real module: get(key, {format}), exists(key), meta().
    async get(key, options) {
        const entries = this.current();
        if (!entries.has(key)) throw new Error('key not found');
        const value = entries.get(key);
        const format = (options && options.format) || 'string';
        if (format === 'json') return JSON.parse(value);
        if (format === 'bytes') return Buffer.from(value, 'utf8');
        return value;
    }

    async exists(key) {
        return this.current().has(key);
    }

    async meta() {
        const st = statSync(this.path);
        return { creationDateTime: st.birthtime.toISOString(), lastUpdatedDateTime: st.mtime.toISOString(), keyCount: this.current().size };
    }
}

// The handler of `file`, evaluated the way CloudFront runs it, with `modules` as its imports.
function loadFunction(file, modules, log) {
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.forEach((line, i) => {
        const match = IMPORT_LINE.exec(line);
        if (match) {
            if (!(match[3] in modules)) throw new Error(`${file}:${i + 1}: module '${match[3]}' is not offered by cloudfront-js-2.0 here`);
            lines[i] = `const ${match[1]} = __cloudfrontModules[${JSON.stringify(match[3])}];`;
        } else if (MODULE_LINE.test(line)) {
            throw new Error(`${file}:${i + 1}: only 'import NAME from "module"' lines are supported`);
        }
    });
    const context = vm.createContext({ __cloudfrontModules: modules, console: log, Buffer });
    // Functions run in strict mode at the edge; the directive shares line 1.
    new vm.Script('"use strict";' + lines.join('\n'), { filename: file }).runInContext(context);
    if (typeof context.handler !== 'function') throw new Error(`${file}: defines no function handler(event)`);
    return context.handler;
}

function percentile(sorted, q) {
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function bench(handler, cases, iterations) {
    const samples = cases.map(() => []);
    const round = async (record) => {
        for (let c = 0; c < cases.length; c++) {
            const event = structuredClone(cases[c].event); // the function mutates its event
            const t0 = process.hrtime.bigint();
            await handler(event);
            const t1 = process.hrtime.bigint();
            if (record) samples[c].push(Number(t1 - t0) / 1000);
        }
    };
    for (let i = 0; i < Math.min(1000, iterations); i++) await round(false); // JIT warm-up
    for (let i = 0; i < iterations; i++) await round(true); // interleaved: noise hits all alike
    const out = {};
    cases.forEach((c, i) => {
        const s = samples[i].sort((a, b) => a - b);
        out[c.label] = {
            n: s.length,
            p50_us: percentile(s, 0.5),
            p90_us: percentile(s, 0.9),
            p99_us: percentile(s, 0.99),
            mean_us: s.reduce((a, b) => a + b, 0) / s.length,
        };
    });
    return out;
}

async function main() {
    const { values } = parseArgs({
        options: {
            function: { type: 'string' },
            'key-store-file': { type: 'string' },
            bench: { type: 'string' },
        },
    });
    if (!values.function || !values['key-store-file']) {
        process.stderr.write('usage: cloudfront_function_host.mjs --function FILE --key-store-file STORE.json [--bench N]\n');
        process.exit(2);
    }
    const iterations = values.bench === undefined ? 0 : Number(values.bench);
    const store = new FileKeyValueStore(values['key-store-file'], !iterations);
    // The function's console goes to stderr: stdout carries only the protocol.
    const log = { log: (...a) => console.error(...a), warn: (...a) => console.error(...a), error: (...a) => console.error(...a) };
    log.info = log.log;
    log.debug = log.log;
    const modules = {
        cloudfront: { kvs: () => store },
        crypto: { createHash, createHmac },
    };
    const handler = loadFunction(values.function, modules, log);
    const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });

    if (iterations) {
        const cases = [];
        for await (const line of input) if (line.trim()) cases.push(JSON.parse(line));
        process.stdout.write(JSON.stringify(await bench(handler, cases, iterations)) + '\n');
        return;
    }
    for await (const line of input) {
        let event;
        let result;
        try {
            event = JSON.parse(line);
        } catch (e) {
            result = { error: { type: 'BadInput', message: `not a JSON event: ${e.message}` } };
        }
        if (!result) {
            try {
                result = await handler(event);
                if (!result || typeof result !== 'object') throw new Error(`handler returned ${typeof result}, not a request or a response`);
            } catch (e) {
                result = { error: { type: 'FunctionError', message: String((e && e.stack) || e) } };
            }
        }
        process.stdout.write(JSON.stringify(result) + '\n');
    }
}

main().catch((e) => {
    process.stderr.write(`cloudfront_function_host: ${(e && e.stack) || e}\n`);
    process.exit(1);
});
