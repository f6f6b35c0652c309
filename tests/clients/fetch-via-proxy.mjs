// A Node program's calls through HTTPS_PROXY: Node 20's built-in fetch
// ignores the proxy variables, so the program installs undici's
// EnvHttpProxyAgent (the documented way).  undici always tunnels with CONNECT,
// so bearerd must run with connect = intercept and the program trust its CA
// (NODE_EXTRA_CA_CERTS).  It never sees a token.  Prints one JSON line:
//   [GET status, GET iat, POST status, DELETE status]
//
// usage: HTTPS_PROXY=http://127.0.0.1:PORT node fetch-via-proxy.mjs https://HOST
import { EnvHttpProxyAgent, fetch, setGlobalDispatcher } from "undici";

setGlobalDispatcher(new EnvHttpProxyAgent());
const base = process.argv[2];
const g = await fetch(base + "/api/items");
const iat = (await g.json()).iat;
const p = await fetch(base + "/api/items", { method: "POST", body: "hello" });
await p.arrayBuffer();
const d = await fetch(base + "/api/items/1", { method: "DELETE" });
await d.arrayBuffer();
console.log(JSON.stringify([g.status, iat, p.status, d.status]));
