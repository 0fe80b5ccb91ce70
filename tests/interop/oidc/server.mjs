// A real OAuth 2.0 authorization server for apiguard's interop tests, on loopback.
// client_credentials with resource indicators (RFC 8707): JWT access tokens
// (RFC 9068; RS256 or ES256) and opaque ones; introspection (RFC 7662) and
// revocation (RFC 7009), with a count of introspection calls; DPoP-bound (RFC
// 9449) and certificate-bound (RFC 8705) access tokens. Signing keys come from
// $JWKS_PATH so that tests can rotate them by restarting the server.
import { readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(readFileSync(process.env.JWKS_PATH, 'utf8'));
const clientJwks = JSON.parse(readFileSync(process.env.CLIENT_JWKS_PATH, 'utf8'));
const API = 'https://api.example';

const resources = {
  [`${API}/rs256`]: { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  [`${API}/es256`]: { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
  [`${API}/opaque`]: { accessTokenFormat: 'opaque' },
  [`${API}/short`]: { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } }, accessTokenTTL: 2 },
};

const provider = new Provider(issuer, {
  jwks,
  clients: [
    {
      client_id: 'service',
      client_secret: 'service-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // Swagger UI in a browser: the client credentials flow, from the API's own
      // origin on loopback (CORS, below).
      client_id: 'swagger-ui',
      client_secret: 'swagger-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // A client whose access tokens are always DPoP-bound (RFC 9449 §5.2).
      client_id: 'dpop-service',
      client_secret: 'dpop-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      dpop_bound_access_tokens: true,
    },
    {
      // A client whose access tokens are bound to its TLS client certificate
      // (RFC 8705 §3). TLS ends before this server in the tests: the certificate
      // arrives URL-encoded in X-Client-Cert, as nginx's $ssl_client_escaped_cert.
      client_id: 'mtls-service',
      client_secret: 'mtls-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      tls_client_certificate_bound_access_tokens: true,
    },
    {
      // The API's own credentials for introspection, with characters that
      // RFC 6749 §2.3.1 requires to be form-encoded.
      client_id: 'api:server',
      client_secret: 'p@ss:w/rd+&= ~%',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // The API authenticating with a signed JWT (RFC 7523, private_key_jwt).
      client_id: 'api-jwt',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: clientJwks,
    },
    {
      client_id: 'api-post',
      client_secret: 'post-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  // Browsers may call the token endpoint cross-origin for the Swagger UI client only,
  // and only from a loopback origin (where the tests serve the API).
  clientBasedCORS: (ctx, origin, client) => (
    client.clientId === 'swagger-ui' && /^http:\/\/127\.0\.0\.1:\d+$/.test(origin)
  ),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
    dPoP: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      getCertificate: (ctx) => {
        const value = ctx.get('x-client-cert');
        return value ? decodeURIComponent(value) : undefined;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => `${API}/rs256`,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        // The MCP example (examples/mcp_server.py) on a loopback port is its own resource.
        const mcp = /^http:\/\/127\.0\.0\.1:\d+\/mcp$/.test(resourceIndicator);
        const resource = resources[resourceIndicator]
          ?? (mcp ? { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } } : undefined);
        if (!resource) throw new errors.InvalidTarget();
        return { scope: 'items:read items:write', audience: resourceIndicator, accessTokenTTL: 300, ...resource };
      },
    },
  },
});

// Introspection calls are counted here, at the server, for the tests that check how
// many calls a resource server makes: GET /test/introspections answers the count.
let introspections = 0;
provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/test/introspections') {
    ctx.body = { count: introspections };
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token/introspection') {
    introspections += 1;
  }
  await next();
});

provider.listen(port, '127.0.0.1').on('listening', () => {
  console.log(`ready ${issuer}`);
});
