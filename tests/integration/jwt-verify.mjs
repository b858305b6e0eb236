// jwt-verify: an independent JWT implementation (panva/jose) for test_auth_jwt.sh.
//
// Run from a directory whose node_modules holds jose@5 (the test copies this file next to its
// npm install). Every answer is one JSON line on stdout; exit 0 on success, 1 when the operation
// fails (the JSON then says {"error": "<jose code>", "message": ...}), 2 on bad usage.
//
//   verify JWKS_URL ISSUER AUDIENCE TOKEN
//       Verifies an access token using only the JWK Set fetched from JWKS_URL (createRemoteJWKSet)
//       with algorithms ES256 and typ at+jwt: prints {"header": {...}, "payload": {...}}.
//   kids JWKS_URL
//       Prints [{"kid", "thumbprint", "kty", "crv", "alg", "use", "private"}] for every key of
//       the set; thumbprint is jose's RFC 7638 SHA-256 thumbprint of the key.
//   sign KIND KEY_PEM HEADER_JSON PAYLOAD_JSON
//       Makes a token for negative tests of the server's own verification and prints it:
//       es256 (signed with the PKCS#8 key KEY_PEM), es256-foreign (signed with a fresh key;
//       KEY_PEM unused), hs256 (HMAC keyed with the SPKI PEM of KEY_PEM's public key: the
//       algorithm-confusion attack), none (unsecured, empty signature). HEADER_JSON members
//       (typ, kid, ...) go into the protected header; alg is set by KIND.
//       Raw kinds sign exactly the bytes given, so malformed tokens can be made: es256-raw
//       (HEADER_JSON and PAYLOAD_JSON are texts base64url-encoded verbatim: duplicate members
//       stay), es256-der (the same with a DER signature instead of JOSE's r||s), es256-b64
//       (HEADER_JSON and PAYLOAD_JSON are already-encoded segments, used verbatim).
//       ES256 signatures come out low-S (s <= n/2, as authd signs and requires); es256-high-s
//       is an es256 token whose s is replaced by n - s (ECDSA malleability: it still verifies
//       mathematically, and authd must refuse it).
//
// HTTPS: pass the server's certificate with NODE_EXTRA_CA_CERTS.
import { createPrivateKey, createPublicKey, sign as cryptoSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as https from 'node:https';
import {
    SignJWT,
    base64url,
    calculateJwkThumbprint,
    createRemoteJWKSet,
    generateKeyPair,
    importPKCS8,
    jwtVerify,
} from 'jose';

function out(obj, code) {
    process.stdout.write(JSON.stringify(obj) + '\n');
    process.exit(code);
}

function usage() {
    process.stderr.write(
        'usage: jwt-verify.mjs verify JWKS_URL ISSUER AUDIENCE TOKEN | kids JWKS_URL |\n' +
            '       sign es256|es256-high-s|es256-foreign|hs256|none|es256-raw|es256-der|es256-b64 KEY_PEM HEADER PAYLOAD\n',
    );
    process.exit(2);
}

function getJson(url) {
    return new Promise((resolve, reject) => {
        const req = https.get(url, { timeout: 10000 }, (res) => {
            const parts = [];
            res.on('data', (c) => parts.push(c));
            res.on('end', () => {
                if (res.statusCode !== 200) {
                    reject(new Error(`GET ${url}: HTTP ${res.statusCode}`));
                    return;
                }
                try {
                    resolve(JSON.parse(Buffer.concat(parts).toString('utf8')));
                } catch (e) {
                    reject(e);
                }
            });
        });
        req.on('timeout', () => req.destroy(new Error(`GET ${url}: timeout`)));
        req.on('error', reject);
    });
}

async function verify([jwksUrl, issuer, audience, token]) {
    if (!token) usage();
    const jwks = createRemoteJWKSet(new URL(jwksUrl), { timeoutDuration: 10000 });
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
        issuer,
        audience,
        algorithms: ['ES256'],
        typ: 'at+jwt',
    });
    out({ header: protectedHeader, payload }, 0);
}

async function kids([jwksUrl]) {
    if (!jwksUrl) usage();
    const set = await getJson(jwksUrl);
    const keys = [];
    for (const k of set.keys) {
        keys.push({
            kid: k.kid,
            thumbprint: await calculateJwkThumbprint(k, 'sha256'),
            kty: k.kty,
            crv: k.crv,
            alg: k.alg,
            use: k.use,
            private: 'd' in k,
        });
    }
    out(keys, 0);
}

// The P-256 group order (FIPS 186-4 D.1.2.3).
const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

// Rewrites the r||s signature of a compact ES256 token with s in the low half, or the high
// half when `high`.
function withS(token, high) {
    const dot = token.lastIndexOf('.');
    const sig = Buffer.from(base64url.decode(token.slice(dot + 1)));
    if (sig.length !== 64) return token;
    let s = BigInt('0x' + sig.subarray(32).toString('hex'));
    if (s > P256_N / 2n !== high) s = P256_N - s;
    Buffer.from(s.toString(16).padStart(64, '0'), 'hex').copy(sig, 32);
    return `${token.slice(0, dot)}.${base64url.encode(sig)}`;
}

function signRaw(kind, keyPem, header, payload) {
    const enc = (t) => (kind === 'es256-b64' ? t : base64url.encode(t));
    const input = `${enc(header)}.${enc(payload)}`;
    const sig = cryptoSign('sha256', Buffer.from(input), {
        key: createPrivateKey(readFileSync(keyPem, 'utf8')),
        dsaEncoding: kind === 'es256-der' ? 'der' : 'ieee-p1363',
    });
    const token = `${input}.${base64url.encode(sig)}`;
    out({ token: kind === 'es256-der' ? token : withS(token, false) }, 0);
}

async function sign([kind, keyPem, headerJson, payloadJson]) {
    if (payloadJson === undefined) usage();
    if (kind === 'es256-raw' || kind === 'es256-der' || kind === 'es256-b64') {
        signRaw(kind, keyPem, headerJson, payloadJson);
        return;
    }
    const header = JSON.parse(headerJson);
    const payload = JSON.parse(payloadJson);
    let key;
    switch (kind) {
        case 'es256':
        case 'es256-high-s':
            key = await importPKCS8(readFileSync(keyPem, 'utf8'), 'ES256');
            break;
        case 'es256-foreign':
            key = (await generateKeyPair('ES256')).privateKey;
            break;
        case 'hs256': {
            const pub = createPublicKey(createPrivateKey(readFileSync(keyPem, 'utf8')));
            key = new TextEncoder().encode(pub.export({ type: 'spki', format: 'pem' }));
            break;
        }
        case 'none': {
            const enc = (o) => base64url.encode(JSON.stringify(o));
            out({ token: `${enc({ ...header, alg: 'none' })}.${enc(payload)}.` }, 0);
            return;
        }
        default:
            usage();
    }
    const alg = kind === 'hs256' ? 'HS256' : 'ES256';
    const token = await new SignJWT(payload).setProtectedHeader({ ...header, alg }).sign(key);
    out({ token: alg === 'ES256' ? withS(token, kind === 'es256-high-s') : token }, 0);
}

const [mode, ...args] = process.argv.slice(2);
const modes = { verify, kids, sign };
if (!modes[mode]) usage();
try {
    await modes[mode](args);
} catch (e) {
    out({ error: e.code || e.name || 'error', message: String(e.message || e) }, 1);
}
