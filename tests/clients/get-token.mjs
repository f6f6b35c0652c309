// Gets a token the way an unmodified app would, through whatever the
// environment points at (IDENTITY_ENDPOINT + IDENTITY_HEADER, or
// AZURE_POD_IDENTITY_AUTHORITY_HOST), and prints one JSON line:
//   {"token", "expiresOnTimestamp", "second_token", "second_expiresOnTimestamp"}
// or {"error", "name", "elapsed_ms"} on failure (exit status 1).
//
// usage: node get-token.mjs mi|dac|msal RESOURCE [CLIENT_ID]
// The second acquisition is made in the same process: it must come from the
// SDK's own cache (the test checks that bearerd saw one request).
import { DefaultAzureCredential, ManagedIdentityCredential } from "@azure/identity";
import { ManagedIdentityApplication } from "@azure/msal-node";

const [kind, resource, clientId] = process.argv.slice(2);
const scope = resource + "/.default";

async function viaIdentity(credential) {
  const a = await credential.getToken(scope);
  const b = await credential.getToken(scope);
  return [a.token, a.expiresOnTimestamp, b.token, b.expiresOnTimestamp];
}

async function viaMsal() {
  const app = new ManagedIdentityApplication(
    clientId ? { managedIdentityIdParams: { userAssignedClientId: clientId } } : {});
  const a = await app.acquireToken({ resource });
  const b = await app.acquireToken({ resource });
  return [a.accessToken, a.expiresOn.getTime(), b.accessToken, b.expiresOn.getTime()];
}

const start = Date.now();
try {
  let r;
  if (kind === "mi")
    r = await viaIdentity(new ManagedIdentityCredential(clientId ? { clientId } : {}));
  else if (kind === "dac")
    r = await viaIdentity(new DefaultAzureCredential(
      clientId ? { managedIdentityClientId: clientId } : {}));
  else if (kind === "msal")
    r = await viaMsal();
  else
    throw new Error("usage: get-token.mjs mi|dac|msal RESOURCE [CLIENT_ID]");
  console.log(JSON.stringify({
    token: r[0], expiresOnTimestamp: r[1], second_token: r[2], second_expiresOnTimestamp: r[3],
  }));
} catch (e) {
  console.log(JSON.stringify({
    error: String(e && e.message || e).slice(0, 2000), name: e && e.name,
    elapsed_ms: Date.now() - start,
  }));
  process.exitCode = 1;
}
