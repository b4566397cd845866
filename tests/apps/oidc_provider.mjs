// A real OpenID Provider (the certified `oidc-provider`) for tests/identity.rs: it issues JWT
// access tokens by the client-credentials grant (`sub` is the client id), signed RS256 or ES256
// as the client's name says, with the provider's own keys, published at its discovery
// document's `jwks_uri`.
//
//   node oidc_provider.mjs PORT STATE_FILE [JWKS_MAX_AGE]
//
// The keys live in STATE_FILE, so a provider stopped and started again on the same port is the
// same provider. Besides the provider's own routes:
//   POST /_rotate   a new RSA and EC key sign from now on; the old ones stay published
//   GET  /_fetches  how many times the key set was fetched
'use strict';
import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [, , port, stateFile, maxAge] = process.argv;
const issuer = `http://127.0.0.1:${port}`;

function newKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rsa-${randomUUID()}`, use: 'sig', alg: 'RS256' },
    { ...ec, kid: `ec-${randomUUID()}`, use: 'sig', alg: 'ES256' },
  ];
}

let keys = existsSync(stateFile) ? JSON.parse(readFileSync(stateFile, 'utf8')) : newKeys();
writeFileSync(stateFile, JSON.stringify(keys));

const client = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
});

function provider() {
  return new Provider(issuer, {
    jwks: { keys },
    clients: ['alice', 'bob', 'alice-es', 'other-audience'].map(client),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:tokengate',
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, _resource, c) => ({
          scope: 'images',
          audience: c.clientId === 'other-audience' ? 'someone-else' : 'tokengate',
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: c.clientId.endsWith('-es') ? 'ES256' : 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (_ctx, token) => ({ email: `${token.clientId}@example.test` }),
  });
}

let current = provider().callback();
let fetches = 0;

createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/_rotate') {
    keys = [...newKeys(), ...keys];
    writeFileSync(stateFile, JSON.stringify(keys));
    current = provider().callback();
    res.end(JSON.stringify({ kids: keys.map((k) => k.kid) }));
    return;
  }
  if (req.url === '/_fetches') {
    res.end(String(fetches));
    return;
  }
  if (req.url === '/jwks') {
    fetches += 1;
    if (maxAge) {
      const setHeader = res.setHeader.bind(res);
      res.setHeader = (name, value) => setHeader(
        name,
        name.toLowerCase() === 'cache-control' ? `public, max-age=${maxAge}` : value,
      );
      setHeader('Cache-Control', `public, max-age=${maxAge}`);
    }
  }
  current(req, res);
}).listen(Number(port), '127.0.0.1', () => console.log(`listening ${issuer}`));
