// API key check: CloudFront Function (runtime cloudfront-js-2.0) on VIEWER-REQUEST of
// /v1/* and /invocations. A request goes on only with a key the platform issued; it
// then carries the verified tenant id in x-inference-tenant (any viewer copy dropped),
// which the edge function and the origin scope caches by. Managed by bin/api-keys.
// It also hands the edge function the stage secret from the same store, in
// x-inference-stage-secret (any viewer copy dropped): cache keys are MACs under it, and the
// edge's /_cache/ lookups carry a credential derived from it (docs/security.md).
//
// Key store (the KeyValueStore associated with this function): key = SHA-256 of the API
// key, lowercase hex; value = JSON {"key_id","tenant","status","created",...}; only
// status "active" passes.
//
// CloudFront Functions facts relied on (CloudFront Developer Guide):
// - function code at most 10 KB ("Quotas on CloudFront Functions"); a test checks it.
// - runtime 2.0 ("JavaScript runtime 2.0 features"): const/let, async/await, await only
//   in async functions, no async closures; modules 'crypto' (createHash sha256, hex
//   digest) and 'cloudfront'. KeyValueStore needs runtime 2.0; no network, timers, file
//   system or dynamic code; the body is never seen ("Restrictions on CloudFront Functions").
// - cf.kvs() without an id reads the one store associated with the function;
//   get() rejects when the key does not exist, exists() resolves a boolean
//   ("Helper methods for key value stores").
// - store keys up to 512 characters, values up to 1024 ("File format for key-value
//   pairs"): 64 hex characters and ~150 characters of JSON.
// - header names arrive lowercase, each {value}, and {value, multiValue: [{value}]}
//   when the viewer repeated it ("CloudFront Functions event structure").
import cf from 'cloudfront';
import crypto from 'crypto';

const keyStore = cf.kvs();
const TENANT_HEADER = 'x-inference-tenant';
const SECRET_HEADER = 'x-inference-stage-secret';
const SECRET_KEY = 'stage-secret'; // the store's entry that holds the stage secret
// RFC 6750 b64token, bounded: garbage is refused before any hashing or store read.
const KEY_SHAPE = /^[A-Za-z0-9\-._~+\/]+=*$/;
const MAX_KEY_CHARS = 256;
const BEARER = /^bearer(?:[ \t]+(.*))?$/i;
// The id becomes a header value and part of cache keys: a short, plain token only.
const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

// One header's value; null when the viewer sent it more than once (which copy would the
// origin see? refuse instead of guessing); undefined when absent.
function single(headers, name) {
    const header = headers[name];
    if (!header) return undefined;
    if (header.multiValue && header.multiValue.length > 1) return null;
    return typeof header.value === 'string' ? ows(header.value) : null;
}

// HTTP's optional whitespace is space and tab only (RFC 9110, OWS); trim() would also
// drop vertical tabs, form feeds and Unicode spaces.
function ows(value) {
    return value.replace(/^[ \t]+|[ \t]+$/g, '');
}

function wellFormed(key) {
    return key.length <= MAX_KEY_CHARS && KEY_SHAPE.test(key) ? key : null;
}

// The presented key: Authorization "Bearer <key>" first, else x-api-key (the same order
// as the cache's tenant scope). '' when none was sent, null when malformed.
function presentedKey(headers) {
    const authorization = single(headers, 'authorization');
    const apiKey = single(headers, 'x-api-key');
    if (authorization === null || apiKey === null) return null;
    if (authorization) {
        const bearer = BEARER.exec(authorization);
        if (bearer) return bearer[1] ? wellFormed(ows(bearer[1])) : null;
        if (!apiKey) return null; // another scheme (Basic ...) and no x-api-key
    }
    return apiKey ? wellFormed(apiKey) : '';
}

// The key's record: the parsed value, 'unknown', or 'unavailable' (store or record broken).
async function keyRecord(keyHash) {
    let text;
    try {
        text = await keyStore.get(keyHash);
    } catch (e) {
        // get() rejects for an unknown key and for a failing store alike: ask which.
        let known;
        try {
            known = await keyStore.exists(keyHash);
        } catch (e2) {
            return 'unavailable';
        }
        return known ? 'unavailable' : 'unknown';
    }
    let record;
    try {
        record = JSON.parse(text);
    } catch (e) {
        return 'unavailable';
    }
    if (!record || typeof record !== 'object' || typeof record.tenant !== 'string' || !TENANT_ID.test(record.tenant)) {
        return 'unavailable';
    }
    return record;
}

function errorResponse(statusCode, statusDescription, type, code, message) {
    const headers = {
        'content-type': { value: 'application/json' },
        'cache-control': { value: 'no-store' },
        'x-inference-cache': { value: 'BYPASS' },
    };
    if (statusCode === 401) headers['www-authenticate'] = { value: 'Bearer' };
    const error = { message: message, type: type, param: null, code: code };
    return {
        statusCode: statusCode,
        statusDescription: statusDescription,
        headers: headers,
        body: { encoding: 'text', data: JSON.stringify({ error: error }) },
    };
}

function unauthorized(message) {
    return errorResponse(401, 'Unauthorized', 'invalid_request_error', 'invalid_api_key', message);
}

async function handler(event) {
    const request = event.request;
    const headers = request.headers;
    delete headers[SECRET_HEADER]; // only this function sets it, never a viewer
    const key = presentedKey(headers);
    if (key === '') {
        return unauthorized("Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.");
    }
    if (key === null) {
        return unauthorized("Malformed API key header: send exactly one 'Authorization: Bearer <key>' or 'x-api-key: <key>'.");
    }
    const record = await keyRecord(crypto.createHash('sha256').update(key).digest('hex'));
    if (record === 'unknown') return unauthorized('Incorrect API key provided.');
    if (record === 'unavailable') {
        // Fail closed, but as a server fault: clients retry a 503 and keep their key, and
        // 5xx alarms see an outage that a wave of 401s would hide.
        return errorResponse(503, 'Service Unavailable', 'server_error', 'api_key_store_unavailable',
            'The API key could not be checked; retry shortly.');
    }
    if (record.status !== 'active') {
        return unauthorized(record.status === 'revoked' ? 'This API key has been revoked.' : 'This API key is not active.');
    }
    headers[TENANT_HEADER] = { value: record.tenant }; // replaces any viewer copy, multiValue too
    let secret;
    try {
        secret = await keyStore.get(SECRET_KEY);
    } catch (e) {
        secret = undefined; // none yet, or the store failed: the request goes on, and nothing is cached
    }
    if (typeof secret === 'string' && secret) headers[SECRET_HEADER] = { value: secret };
    return request;
}
