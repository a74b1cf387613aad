// Stored answers are read only by the stage's own edge function: CloudFront Function
// (runtime cloudfront-js-2.0) on VIEWER-REQUEST of /_cache/*, before CloudFront's cache or
// S3 is consulted. The edge function presents x-inference-cache-read: HMAC-SHA256 of the
// stage secret (the KeyValueStore's "stage-secret" entry, written by
// `bin/api-keys rotate-secret`) over 'inference-cache/cache-read/1', hex. Anything else,
// a platform API key included, gets 403 (docs/security.md).
//
// CloudFront Functions facts relied on (CloudFront Developer Guide): the 'crypto' module
// offers createHmac (sha256, hex digest); cf.kvs().get() rejects for a missing key; a
// header sent more than once arrives as {value, multiValue}.
import cf from 'cloudfront';
import crypto from 'crypto';

const keyStore = cf.kvs();
const CREDENTIAL_HEADER = 'x-inference-cache-read';
const SECRET_KEY = 'stage-secret';
const CONTEXT = 'inference-cache/cache-read/1';

function forbidden() {
    const error = { message: 'Stored answers are read only by the edge.', type: 'invalid_request_error', param: null, code: 'forbidden' };
    return {
        statusCode: 403,
        statusDescription: 'Forbidden',
        headers: { 'content-type': { value: 'application/json' }, 'cache-control': { value: 'no-store' } },
        body: { encoding: 'text', data: JSON.stringify({ error: error }) },
    };
}

// Equal, in time that does not depend on where two strings of the same length differ.
function same(a, b) {
    if (a.length !== b.length) return false;
    let difference = 0;
    for (let i = 0; i < a.length; i++) difference |= a.charCodeAt(i) ^ b.charCodeAt(i);
    return difference === 0;
}

async function handler(event) {
    const request = event.request;
    const presented = request.headers[CREDENTIAL_HEADER];
    if (!presented || (presented.multiValue && presented.multiValue.length > 1) || typeof presented.value !== 'string') {
        return forbidden();
    }
    let secret;
    try {
        secret = await keyStore.get(SECRET_KEY);
    } catch (e) {
        return forbidden(); // no secret (yet), or the store failed: nobody reads
    }
    if (typeof secret !== 'string' || !secret) return forbidden();
    const expected = crypto.createHmac('sha256', secret).update(CONTEXT).digest('hex');
    if (!same(presented.value, expected)) return forbidden();
    delete request.headers[CREDENTIAL_HEADER];
    return request;
}
