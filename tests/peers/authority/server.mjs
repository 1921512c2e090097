// A real OAuth2 authority for broker-mode tests, built on node `oidc-provider` (OpenID certified).
//
//   node server.mjs CONFIG.json
//
// CONFIG.json (all paths absolute; ports 0 = pick a free one):
//   {
//     "host": "127.0.0.1",            // listen address of both ports (loopback)
//     "https_port": 0,                // token endpoint, TLS 1.3 only
//     "admin_port": 0,                // plain HTTP admin API (fault switches, request log)
//     "cert": "/path/server.pem",     // PEM chain (leaf first)
//     "key": "/path/server.key",      // PEM private key
//     "tenant": "tenant-guid",        // first path segment, as in Entra ID
//     "token_alg": "ES256",           // access-token signature: ES256 | RS256 | PS256
//     "access_token_ttl": 3600,       // seconds
//     "exit_on_stdin_close": false,   // exit when stdin reaches EOF (the parent died)
//     "warm_up": true,                // one v1 + one v2 token request before listening is printed
//     "clients": [ CLIENT, ... ]
//   }
//   CLIENT = {
//     "client_id": "…",
//     "alg": "ES256" | "PS256" | "RS256",    // token_endpoint_auth_signing_alg
//     "jwks": { "keys": [ public JWK with "kid" ] },
//     "resources": ["https://r/", …] | null, // allowed resource indicators; null = any
//     "x5t_s256": "…" | null                  // if set, the assertion header must carry it
//   }
//
// Endpoints (HTTPS, mounted twice like Entra ID's v1 and v2 endpoints):
//   POST /<tenant>/oauth2/token            v1: response numbers as strings, plus expires_on,
//                                          ext_expires_in, not_before, resource
//   POST /<tenant>/oauth2/v2.0/token       v2: oidc-provider's response (numbers), scope
//   GET  /<tenant>/oauth2[/v2.0]/jwks      the provider's signing keys
//   GET  /<tenant>/oauth2[/v2.0]/.well-known/openid-configuration
// Both token endpoints take both request styles: `resource=R` (RFC 8707) and `scope=R/.default`
// (mapped to resource R by features.resourceIndicators.defaultResource). The response shape
// follows the path, not the style.
//
// Admin API (plain HTTP, loopback):
//   GET    /health                 200 "ok"
//   PUT    /fault  {kind, ...}     set the fault applied to token requests (see applyFault)
//   GET    /fault                  the current fault
//   GET    /requests               token requests seen (params, decoded assertion, status)
//   DELETE /requests               clear that log
//   POST   /clients CLIENT         register one more client at runtime
//
// Startup prints one line to stdout:
//   authority listening https=127.0.0.1:PORT admin=127.0.0.1:PORT tenant=T
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider, { errors } from 'oidc-provider';

const configPath = process.argv[2] || process.env.AUTHORITY_CONFIG;
if (!configPath) {
  console.error('usage: node server.mjs CONFIG.json');
  process.exit(2);
}
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const host = cfg.host || '127.0.0.1';
const tenant = cfg.tenant || 'tenant';
const tokenAlg = cfg.token_alg || 'ES256';
const ttl = cfg.access_token_ttl || 3600;
const V1 = `/${tenant}/oauth2`;
const V2 = `/${tenant}/oauth2/v2.0`;

// ---- state shared with the admin API ----

let fault = { kind: 'none' };
const requests = [];
const MAX_LOG = 1000;
let seq = 0;
const clientResources = new Map(); // client_id -> Set of allowed resources, or null (any)
const clientX5t = new Map(); // client_id -> required x5t#S256

// ---- provider signing keys (fresh per run) ----

function signingJwk(type, opts, kid) {
  const { privateKey } = crypto.generateKeyPairSync(type, opts);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig' };
}
// The RSA key only when tokens are RSA-signed: generating it costs ~0.3 s of startup.
const jwks = {
  keys: [
    tokenAlg === 'ES256'
      ? signingJwk('ec', { namedCurve: 'P-256' }, `ec-${crypto.randomUUID()}`)
      : signingJwk('rsa', { modulusLength: 2048 }, `rsa-${crypto.randomUUID()}`),
  ],
};

// ---- listeners: bind first (port 0), then build the provider with the real issuer ----

let providerCallback = null;
const tlsServer = https.createServer(
  {
    cert: fs.readFileSync(cfg.cert),
    key: fs.readFileSync(cfg.key),
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
  },
  (req, res) => {
    handle(req, res).catch((e) => {
      console.error('authority: handler error', e);
      if (!res.headersSent) {
        res.writeHead(500);
      }
      res.end();
    });
  },
);
// TLS handshake failures (e.g. a TLS 1.2 client) are expected in tests: keep them quiet.
tlsServer.on('tlsClientError', () => {});

const adminServer = http.createServer((req, res) => {
  admin(req, res).catch((e) => json(res, 500, { error: String(e) }));
});

await new Promise((resolve) => tlsServer.listen(cfg.https_port || 0, host, resolve));
await new Promise((resolve) => adminServer.listen(cfg.admin_port || 0, host, resolve));
const httpsPort = tlsServer.address().port;
const adminPort = adminServer.address().port;
const issuer = `https://${host}:${httpsPort}/${tenant}/v2.0`;

const provider = new Provider(issuer, {
  clientAuthMethods: ['private_key_jwt'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['ES256', 'PS256', 'RS256'],
  },
  jwks,
  // Clients default to RS256 ID tokens, which a provider without an RSA key refuses to register.
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    id_token_signed_response_alg: tokenAlg,
  },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    introspection: { enabled: false },
    revocation: { enabled: false },
    userinfo: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // v2 style: `scope=R/.default` (no `resource`) names resource R.
      async defaultResource(ctx) {
        const { scope } = ctx.oidc.params;
        if (!scope) {
          throw new errors.InvalidRequest(
            "the request must name a resource: 'resource=R' (v1) or 'scope=R/.default' (v2)",
          );
        }
        const dflt = scope.split(' ').filter((s) => s.endsWith('/.default'));
        if (dflt.length !== 1) {
          throw new errors.InvalidScope(
            "client credentials need exactly one scope ending in '/.default'",
            scope,
          );
        }
        return dflt[0].slice(0, -'/.default'.length);
      },
      useGrantedResource: async () => false,
      async getResourceServerInfo(ctx, resource, client) {
        const allowed = clientResources.get(client.clientId);
        if (allowed && !allowed.has(resource)) {
          throw new errors.InvalidTarget(`resource ${resource} is not allowed for this client`);
        }
        return {
          scope: `${resource}/.default`,
          audience: resource,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: tokenAlg } },
        };
      },
    },
  },
  ttl: {
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || ttl,
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || ttl,
  },
  extraTokenClaims: async (ctx) => ({
    tid: tenant,
    ver: ctx.req.imdsStyle === 'v1' ? '1.0' : '2.0',
  }),
  // RFC 7523 as PROTOCOL.md §5 has it, stricter than oidc-provider's defaults: aud must be the
  // token endpoint URL actually posted to (not the issuer), sub = iss, iat and nbf present, a
  // kid (or the registered certificate's x5t#S256).
  async assertJwtClientAuthClaimsAndHeader(ctx, claims, header, client) {
    const tokenUrl = ctx.oidc.urlFor('token');
    if (claims.aud !== tokenUrl) {
      throw new errors.InvalidClientAuth(`aud must be the token endpoint URL ${tokenUrl}`);
    }
    if (claims.sub !== client.clientId) {
      throw new errors.InvalidClientAuth('sub must be the client_id');
    }
    for (const c of ['iat', 'nbf', 'exp']) {
      if (typeof claims[c] !== 'number') {
        throw new errors.InvalidClientAuth(`${c} must be a number`);
      }
    }
    const x5t = clientX5t.get(client.clientId);
    if (x5t) {
      if (header['x5t#S256'] !== x5t) {
        throw new errors.InvalidClientAuth('x5t#S256 does not match the registered certificate');
      }
    } else if (typeof header.kid !== 'string') {
      throw new errors.InvalidClientAuth('the assertion header must carry a kid');
    }
  },
});

// Entra-v1-shaped success responses on the v1 mount.
provider.use(async (ctx, next) => {
  await next();
  const b = ctx.body;
  if (ctx.req.imdsStyle === 'v1' && ctx.status === 200 && b && typeof b === 'object' && b.access_token) {
    // expires_on and not_before are the token's own exp and iat (as Entra's are): read from
    // the JWT, not from the clock again, which may have passed a second boundary since.
    const claims = JSON.parse(Buffer.from(b.access_token.split('.')[1], 'base64url').toString());
    ctx.body = {
      token_type: b.token_type,
      expires_in: String(b.expires_in),
      ext_expires_in: String(b.expires_in),
      expires_on: String(claims.exp),
      not_before: String(claims.iat),
      resource: String(ctx.oidc?.params?.resource ?? ''),
      access_token: b.access_token,
    };
  }
  // The answer is ready (the token issued, its exp fixed): hold it back if asked.
  if (ctx.req.imdsAnswerDelay) {
    await new Promise((resolve) => setTimeout(resolve, ctx.req.imdsAnswerDelay));
  }
});

// The reason behind an error response, for the request log (oidc-provider answers
// invalid_client without details).
for (const event of ['grant.error', 'server_error']) {
  provider.on(event, (ctx, err) => {
    const entry = ctx.req.imdsEntry;
    if (entry) {
      entry.error = [err.message, err.error_description, err.error_detail, err.cause?.message]
        .filter(Boolean)
        .join(': ');
    }
  });
}

providerCallback = provider.callback();

for (const c of cfg.clients || []) {
  await registerClient(c);
}

if (cfg.warm_up !== false) {
  await warmUp();
}

console.log(
  `authority listening https=${host}:${httpsPort} admin=${host}:${adminPort} tenant=${tenant}`,
);

// One v1 and one v2 token request through the whole stack (TLS, koa, client authentication,
// JWT signing) with a throw-away client, so that the first real request does not pay for
// node's JIT and lazy module loading (~150-200 ms here). Not logged; the client is removed.
async function warmUp() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const clientId = `warm-up-${crypto.randomUUID()}`;
  await registerClient({
    client_id: clientId,
    alg: 'ES256',
    jwks: { keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'warm-up' }] },
  });
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  for (const [mount, target] of [
    [V1, { resource: 'https://warm-up.invalid/' }],
    [V2, { scope: 'https://warm-up.invalid//.default' }],
  ]) {
    const url = `https://${host}:${httpsPort}${mount}/token`;
    const now = Math.floor(Date.now() / 1000);
    const input = `${b64({ alg: 'ES256', typ: 'JWT', kid: 'warm-up' })}.${b64({
      aud: url, iss: clientId, sub: clientId, jti: crypto.randomUUID(), iat: now, nbf: now, exp: now + 60,
    })}`;
    const sig = crypto.sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
    const body = new URLSearchParams({
      grant_type: 'client_credentials',
      ...target,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: `${input}.${sig.toString('base64url')}`,
    }).toString();
    const status = await new Promise((resolve, reject) => {
      // Our own listener on loopback, whatever certificate the test gave it (possibly a
      // deliberately wrong one): no verification for this self-call only.
      const req = https.request(url, {
        method: 'POST',
        rejectUnauthorized: false,
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      });
      req.on('error', reject);
      // Never let the warm-up hold up startup.
      req.setTimeout(10000, () => req.destroy(new Error('warm-up request timed out')));
      req.end(body);
    }).catch((e) => `error (${e.message})`);
    if (status !== 200) {
      console.error(`authority: warm-up token request to ${url} answered ${status}`);
    }
  }
  await provider.Client.adapter.destroy(clientId);
  clientResources.delete(clientId);
  requests.length = 0;
  seq = 0;
}

async function registerClient(c) {
  if (!c.client_id || !c.jwks) {
    throw new Error('a client needs client_id and jwks');
  }
  const metadata = {
    client_id: c.client_id,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: c.alg || 'ES256',
    jwks: c.jwks,
  };
  // Validates the metadata (throws on bad JWKs or algorithms), then stores it.
  const client = new provider.Client(metadata);
  await provider.Client.adapter.upsert(client.clientId, client.metadata());
  clientResources.set(c.client_id, c.resources ? new Set(c.resources) : null);
  if (c.x5t_s256) {
    clientX5t.set(c.client_id, c.x5t_s256);
  } else {
    clientX5t.delete(c.client_id);
  }
}

// ---- HTTPS request handling: mounts, request log, faults ----

async function handle(req, res) {
  const path = req.url.split('?')[0];
  let mount;
  if (path.startsWith(`${V2}/`)) {
    mount = V2;
    req.imdsStyle = 'v2';
  } else if (path.startsWith(`${V1}/`)) {
    mount = V1;
    req.imdsStyle = 'v1';
  } else {
    json(res, 404, { error: 'not_found', error_description: `no endpoint at ${path}` });
    return;
  }

  if (req.method === 'POST' && path === `${mount}/token`) {
    const body = await readBody(req, 64 * 1024);
    const entry = logRequest(req, path, body);
    req.imdsEntry = entry;
    res.on('finish', () => {
      entry.status = res.statusCode;
    });
    req.body = body; // oidc-provider takes an already read body from req.body
    if (await applyFault(req, res, entry)) {
      return;
    }
  }

  // Mounted like express would: oidc-provider derives its URLs (and the accepted assertion aud)
  // from originalUrl minus url.
  req.originalUrl = req.url;
  req.baseUrl = mount;
  req.url = req.url.slice(mount.length);
  providerCallback(req, res);
}

function logRequest(req, path, body) {
  const params = Object.fromEntries(new URLSearchParams(body));
  let assertion = null;
  if (params.client_assertion) {
    const [h, p] = params.client_assertion.split('.');
    try {
      assertion = {
        header: JSON.parse(Buffer.from(h, 'base64url').toString()),
        claims: JSON.parse(Buffer.from(p, 'base64url').toString()),
      };
    } catch {
      assertion = { error: 'not a JWS' };
    }
  }
  const entry = {
    seq: ++seq,
    time_ms: Date.now(),
    path,
    style: req.imdsStyle,
    host: req.headers.host ?? null,
    content_type: req.headers['content-type'] ?? null,
    params,
    assertion,
    fault: null,
    status: null,
    error: null,
  };
  requests.push(entry);
  if (requests.length > MAX_LOG) {
    requests.shift();
  }
  return entry;
}

// Applies the current fault to a token request. Returns true when it answered the request.
//   {kind: 'none'}
//   {kind: 'delay', ms}                     answer normally after ms
//   {kind: 'delay_answer', ms}              issue the token now, send the answer ms later
//   {kind: 'status', status}                e.g. 500 / 503, JSON error body
//   {kind: 'too_many', retry_after}         429 with Retry-After: retry_after (seconds)
//   {kind: 'malformed'}                     200, Content-Type JSON, truncated JSON body
//   {kind: 'invalid_client', status?}       400 (or status) {"error":"invalid_client"}
//   {kind: 'drop'}                          close the connection without a response
// Any kind may carry `delay_ms` (wait before acting) and `count` (affect that many requests,
// then revert to none; absent = until changed).
async function applyFault(req, res, entry) {
  const f = fault;
  if (f.kind === 'none') {
    return false;
  }
  if (typeof f.count === 'number') {
    f.count -= 1;
    if (f.count <= 0) {
      fault = { kind: 'none' };
    }
  }
  entry.fault = f.kind;
  if (f.kind === 'delay_answer') {
    req.imdsAnswerDelay = f.ms;
    return false;
  }
  const wait = f.kind === 'delay' ? f.ms : f.delay_ms;
  if (wait) {
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
  switch (f.kind) {
    case 'delay':
      return false;
    case 'status': {
      const status = f.status || 500;
      json(res, status, {
        error: status === 503 ? 'temporarily_unavailable' : 'server_error',
        error_description: `injected fault: HTTP ${status}`,
      });
      return true;
    }
    case 'too_many':
      json(
        res,
        429,
        { error: 'temporarily_unavailable', error_description: 'injected fault: throttled' },
        { 'Retry-After': String(f.retry_after ?? 1) },
      );
      return true;
    case 'malformed': {
      const body = '{"token_type":"Bearer","expires_in":3599,"access_token":"eyJhbGciOi';
      res.writeHead(200, {
        'Content-Type': 'application/json; charset=utf-8',
        'Content-Length': Buffer.byteLength(body),
        'Cache-Control': 'no-store',
      });
      res.end(body);
      return true;
    }
    case 'invalid_client':
      json(res, f.status || 400, {
        error: 'invalid_client',
        error_description: 'injected fault: client authentication failed',
      });
      return true;
    case 'drop':
      req.socket.destroy();
      return true;
    default:
      json(res, 500, { error: 'server_error', error_description: `unknown fault ${f.kind}` });
      return true;
  }
}

// ---- admin API ----

const FAULT_KINDS = new Set(['none', 'delay', 'delay_answer', 'status', 'too_many', 'malformed', 'invalid_client', 'drop']);

async function admin(req, res) {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok');
  } else if (path === '/fault' && (req.method === 'PUT' || req.method === 'POST')) {
    const f = JSON.parse((await readBody(req, 4096)) || '{}');
    if (!FAULT_KINDS.has(f.kind)) {
      json(res, 400, { error: `kind must be one of ${[...FAULT_KINDS].join(', ')}` });
      return;
    }
    fault = f;
    json(res, 200, fault);
  } else if (path === '/fault' && req.method === 'GET') {
    json(res, 200, fault);
  } else if (path === '/requests' && req.method === 'GET') {
    json(res, 200, requests);
  } else if (path === '/requests' && req.method === 'DELETE') {
    requests.length = 0;
    json(res, 200, []);
  } else if (path === '/clients' && req.method === 'POST') {
    const c = JSON.parse(await readBody(req, 64 * 1024));
    try {
      await registerClient(c);
    } catch (e) {
      json(res, 400, { error: String(e.message || e) });
      return;
    }
    json(res, 200, { client_id: c.client_id });
  } else {
    json(res, 404, { error: 'not found' });
  }
}

// ---- helpers ----

function json(res, status, value, headers = {}) {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(body);
}

async function readBody(req, limit) {
  const chunks = [];
  let n = 0;
  for await (const chunk of req) {
    n += chunk.length;
    if (n > limit) {
      throw new Error('request body too large');
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// Exit cleanly on a signal, and (when asked) when the parent closes stdin: a test process that
// dies without cleaning up takes the authority with it.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
if (cfg.exit_on_stdin_close) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
