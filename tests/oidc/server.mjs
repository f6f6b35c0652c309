// A real OAuth2 authorization server for the integration tests: oidc-provider
// (written by nobody on this team) on 127.0.0.1, over HTTPS with the test CA's
// server certificate.  tests/integration/test_sources_oauth2.py starts it and
// points bearerd's oauth2 source at its token endpoint.
//
// Clients (client_credentials only, resource indicators on):
//   bearerd-basic   client_secret_basic, secret from $OIDC_SECRET_BASIC
//   bearerd-post    client_secret_post,  secret from $OIDC_SECRET_POST
//   bearerd-jwt     private_key_jwt, public key from the PEM certificate or
//                   public key in $OIDC_CLIENT_CERT, kid $OIDC_CLIENT_KID
//   bearerd-jwt-ec  private_key_jwt with the EC P-256 key of $OIDC_CLIENT_CERT_EC
//                   (only when set)
// Resource servers: $OIDC_RESOURCES (space-separated URIs, default
// https://api.example.test) get JWT access tokens (RS256, aud = the resource).
// Its signing keys are generated at start and published at /jwks.
//
// Usage: node server.mjs [PORT]   (or $OIDC_PORT; 0 = any free port)
// Environment: OIDC_TLS_CERT, OIDC_TLS_KEY (PEM; plain HTTP on loopback when unset).
// Prints "listening <issuer>" on stdout once it accepts connections.
// Never prints a secret or a token.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import process from 'node:process';

import Provider from 'oidc-provider';

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`server.mjs: ${name} must be set`);
    process.exit(2);
  }
  return v;
}

const port = Number(process.argv[2] ?? process.env.OIDC_PORT ?? 0);
const tlsCert = process.env.OIDC_TLS_CERT;
const tlsKey = process.env.OIDC_TLS_KEY;
const resources = (process.env.OIDC_RESOURCES || 'https://api.example.test').split(/\s+/).filter(Boolean);
const ttl = Number(process.env.OIDC_TOKEN_TTL || 3600);

const clientJwk = crypto.createPublicKey(fs.readFileSync(required('OIDC_CLIENT_CERT'))).export({ format: 'jwk' });
if (process.env.OIDC_CLIENT_KID) clientJwk.kid = process.env.OIDC_CLIENT_KID;

const ecCert = process.env.OIDC_CLIENT_CERT_EC;
const ecJwk = ecCert ? crypto.createPublicKey(fs.readFileSync(ecCert)).export({ format: 'jwk' }) : null;

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'oidc-test-signing', use: 'sig', alg: 'RS256' };

const common = {
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'api:read api:write',
};

const configuration = {
  clients: [
    { ...common, client_id: 'bearerd-basic', client_secret: required('OIDC_SECRET_BASIC'),
      token_endpoint_auth_method: 'client_secret_basic' },
    { ...common, client_id: 'bearerd-post', client_secret: required('OIDC_SECRET_POST'),
      token_endpoint_auth_method: 'client_secret_post' },
    { ...common, client_id: 'bearerd-jwt', token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [clientJwk] } },
    ...(ecJwk ? [{ ...common, client_id: 'bearerd-jwt-ec', token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [ecJwk] } }] : []),
  ],
  jwks: { keys: [signingJwk] },
  scopes: ['api:read', 'api:write'],
  routes: { jwks: '/jwks', token: '/token' },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // a request without a resource indicator gets an opaque token, not a JWT
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (!resources.includes(resourceIndicator)) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'api:read api:write',
          audience: resourceIndicator,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: { ClientCredentials: ttl },
};

const server = tlsCert
  ? https.createServer({ cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey || required('OIDC_TLS_KEY')) })
  : http.createServer();

server.listen(port, '127.0.0.1', () => {
  const { port: bound } = server.address();
  const issuer = `${tlsCert ? 'https' : 'http'}://127.0.0.1:${bound}`;
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (ctx, err) => console.error(`server_error: ${err.message}`));
  provider.on('grant.error', (ctx, err) => console.error(`grant.error: ${err.error}: ${err.error_description}`));
  provider.on('grant.success', (ctx) => console.error(`grant.success: ${ctx.oidc.client?.clientId}`));
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
