// A real OpenID provider for the end-to-end tests (tests/e2e/oidc_provider.rs): panva's
// oidc-provider, configured the way a deployment in front of an MCP gateway is:
//
// - one confidential client for the client-credentials grant (a machine caller);
// - resource indicators (RFC 8707), so an access token is a JWT (RFC 9068) for the resource
//   the client names, signed with the provider's own RS256 key;
// - discovery at /.well-known/openid-configuration, keys at /jwks.
//
// Usage: node provider.mjs '{"client_id": "...", "client_secret": "...", "scopes": "..."}'
// It listens on 127.0.0.1 on an ephemeral port over plain HTTP, and prints one line,
// `{"issuer": "http://127.0.0.1:<port>"}`, once it serves.
//
// For the test only, POST /test/rotate rotates the signing key as providers do: a new key is
// generated, published first and used for every new token, and the previous one stays
// published so tokens already issued keep verifying. It answers `{"kid": "<new kid>"}`.
// Stopping the process is how the test takes the provider down.
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const options = JSON.parse(process.argv[2] ?? '{}');
const clientId = options.client_id ?? 'agent';
const clientSecret = options.client_secret ?? 'agent-secret-agent-secret-agent-secret';
const scopes = (options.scopes ?? 'tools:read tools:call').split(' ');

let generation = 0;
function newKey() {
  generation += 1;
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `key-${generation}-${crypto.randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

function configuration(keys) {
  return {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: scopes.join(' '),
    }],
    // The first key signs; the others are published for tokens signed before a rotation.
    jwks: { keys },
    scopes,
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // Any absolute resource the client asks for is a resource server whose access
        // tokens are RS256 JWTs with that resource as their audience.
        getResourceServerInfo: (_ctx, resource) => ({
          scope: scopes.join(' '),
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256', kid: keys[0].kid } },
        }),
      },
    },
  };
}

let keys = [newKey()];
let provider;
let handler;
function build() {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = new Provider(issuer, configuration(keys));
  handler = provider.callback();
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/test/rotate') {
    keys = [newKey(), keys[0]];
    build();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kid: keys[0].kid }));
    return;
  }
  handler(req, res);
});

server.listen(0, '127.0.0.1', () => {
  build();
  process.stdout.write(`${JSON.stringify({ issuer: provider.issuer, kid: keys[0].kid })}\n`);
});

// The test kills the process; SIGTERM too ends it at once.
process.on('SIGTERM', () => process.exit(0));
