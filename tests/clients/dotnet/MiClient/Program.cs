// MiClient: asks a managed-identity credential for tokens the way an app
// would, and reports what happened as one JSON object per line on stdout:
//
//   {"event":"ready"}                      with --barrier, before waiting for a line on stdin
//   {"event":"http", ...}                  with --observe, one per HTTP attempt the client made
//   {"event":"capabilities", ...}          with --discover (msal), what discovery found
//   {"event":"token", ...}                 one per successful GetToken call
//   {"event":"error", ...}                 one per failed call
//
// Never a token: a token is reported by the SHA-256 of its bytes (first 16
// hex digits) and the claims of its payload, so the tests can compare tokens
// across processes and check the log scan without holding them.
//
// Usage: MiClient --credential dac|mic|msal [--id system|client=V|resource=V|object=V]
//                 [--scope S] [--calls N] [--pop] [--retry-delay-ms N] [--observe] [--barrier]
//                 [--discover]
//   --pop       asks for a proof-of-possession token (TokenRequestContext), which makes
//               Azure.Identity discover the host's mTLS capabilities first
//   --discover  (msal) runs MSAL.NET's capability discovery before the calls
//   dac    new DefaultAzureCredential() (options only with --observe/--retry-delay-ms/--id)
//   mic    new ManagedIdentityCredential(ManagedIdentityId.X) or (ManagedIdentityCredentialOptions)
//   msal   MSAL.NET's ManagedIdentityApplicationBuilder without Azure.Identity
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Azure.Core;
using Azure.Core.Pipeline;
using Azure.Identity;
using Msal = Microsoft.Identity.Client;
using MsalId = Microsoft.Identity.Client.AppConfig.ManagedIdentityId;

var opts = Options.Parse(args);
Out.Observe = opts.Observe;

object credential = opts.Credential switch
{
    "dac" => Credentials.Dac(opts),
    "mic" => Credentials.Mic(opts),
    "msal" => Credentials.MsalApp(opts),
    _ => throw new ArgumentException("--credential must be dac, mic or msal"),
};

if (opts.Barrier)
{
    Out.Write(new JsonObject { ["event"] = "ready" });
    Console.In.ReadLine();
}

int failures = 0;
if (opts.Discover)
{
    try
    {
        var app = (Msal.ManagedIdentityApplication)credential;
        var caps = await app.GetManagedIdentityCapabilitiesAsync(CancellationToken.None);
        Out.Write(new JsonObject
        {
            ["event"] = "capabilities",
            ["source"] = caps.Source.ToString(),
            ["max_binding"] = caps.MaxSupportedBindingStrength.ToString(),
            ["error_reason"] = caps.ErrorReason,
        });
    }
    catch (Exception e)
    {
        failures++;
        Out.Error(0, e);
    }
}
for (int n = 1; n <= opts.Calls; n++)
{
    try
    {
        if (credential is TokenCredential tc)
        {
            var ctx = new TokenRequestContext([opts.Scope], isProofOfPossessionEnabled: opts.Pop);
            AccessToken t = await tc.GetTokenAsync(ctx, CancellationToken.None);
            Out.Token(n, t.Token, t.ExpiresOn, t.RefreshOn, t.TokenType);
        }
        else
        {
            var app = (Msal.IManagedIdentityApplication)credential;
            var r = await app.AcquireTokenForManagedIdentity(opts.Scope).ExecuteAsync();
            Out.Token(n, r.AccessToken, r.ExpiresOn, r.AuthenticationResultMetadata?.RefreshOn, r.TokenType,
                      r.AuthenticationResultMetadata?.TokenSource.ToString());
        }
    }
    catch (Exception e)
    {
        failures++;
        Out.Error(n, e);
    }
}
return failures == 0 ? 0 : 1;

internal sealed class Options
{
    public string Credential = "dac";
    public string Id = "system";
    public string Scope = "api://apim-demo";
    public int Calls = 1;
    public bool Pop;
    public int? RetryDelayMs;
    public bool Observe;
    public bool Barrier;
    public bool Discover;

    public static Options Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--credential": o.Credential = Next(); break;
                case "--id": o.Id = Next(); break;
                case "--scope": o.Scope = Next(); break;
                case "--calls": o.Calls = int.Parse(Next()); break;
                case "--pop": o.Pop = true; break;
                case "--retry-delay-ms": o.RetryDelayMs = int.Parse(Next()); break;
                case "--observe": o.Observe = true; break;
                case "--barrier": o.Barrier = true; break;
                case "--discover": o.Discover = true; break;
                default: throw new ArgumentException($"unknown argument {args[i]}");
            }
        }
        return o;
    }

    /// <summary>The --id as (kind, value): system, client, resource or object.</summary>
    public (string Kind, string Value) IdParts()
    {
        int eq = Id.IndexOf('=');
        return eq < 0 ? (Id, "") : (Id[..eq], Id[(eq + 1)..]);
    }
}

internal static class Credentials
{
    public static TokenCredential Dac(Options o)
    {
        var (kind, value) = o.IdParts();
        if (!o.Observe && o.RetryDelayMs is null && kind == "system")
            return new DefaultAzureCredential();
        var options = new DefaultAzureCredentialOptions();
        switch (kind)
        {
            case "system": break;
            case "client": options.ManagedIdentityClientId = value; break;
            case "resource": options.ManagedIdentityResourceId = new ResourceIdentifier(value); break;
            default: throw new ArgumentException("DefaultAzureCredential takes --id system, client=V or resource=V");
        }
        Configure(options, o);
        return new DefaultAzureCredential(options);
    }

    public static TokenCredential Mic(Options o)
    {
        var (kind, value) = o.IdParts();
        Azure.Identity.ManagedIdentityId id = kind switch
        {
            "system" => Azure.Identity.ManagedIdentityId.SystemAssigned,
            "client" => Azure.Identity.ManagedIdentityId.FromUserAssignedClientId(value),
            "resource" => Azure.Identity.ManagedIdentityId.FromUserAssignedResourceId(new ResourceIdentifier(value)),
            "object" => Azure.Identity.ManagedIdentityId.FromUserAssignedObjectId(value),
            _ => throw new ArgumentException("--id must be system, client=V, resource=V or object=V"),
        };
        if (!o.Observe && o.RetryDelayMs is null)
            return new ManagedIdentityCredential(id);
        var options = new ManagedIdentityCredentialOptions(id);
        Configure(options, o);
        return new ManagedIdentityCredential(options);
    }

    public static Msal.IManagedIdentityApplication MsalApp(Options o)
    {
        var (kind, value) = o.IdParts();
        MsalId id = kind switch
        {
            "system" => MsalId.SystemAssigned,
            "client" => MsalId.WithUserAssignedClientId(value),
            "resource" => MsalId.WithUserAssignedResourceId(value),
            "object" => MsalId.WithUserAssignedObjectId(value),
            _ => throw new ArgumentException("--id must be system, client=V, resource=V or object=V"),
        };
        var b = Msal.ManagedIdentityApplicationBuilder.Create(id);
        if (o.Observe)
            b.WithHttpClientFactory(new ObservingHttpClientFactory());
        return b.Build();
    }

    private static void Configure(TokenCredentialOptions options, Options o)
    {
        if (o.RetryDelayMs is int ms)
            options.Retry.Delay = TimeSpan.FromMilliseconds(ms);
        // a transport, not a policy: the managed-identity pipeline is built from a
        // clone of the options that keeps the transport but drops added policies
        if (o.Observe)
            options.Transport = new HttpClientTransport(new ObservingHandler(new SocketsHttpHandler()));
    }
}

/// <summary>For MSAL.NET alone: an HttpClient whose handler reports every attempt.</summary>
internal sealed class ObservingHttpClientFactory : Msal.IMsalHttpClientFactory
{
    private readonly HttpClient _client = new(new ObservingHandler(new SocketsHttpHandler()));

    public HttpClient GetHttpClient() => _client;
}

/// <summary>
/// The transport's handler: reports every attempt that reaches the wire, so
/// retries by Azure.Core's pipeline or by MSAL.NET are each seen.
/// </summary>
internal sealed class ObservingHandler(HttpMessageHandler inner) : DelegatingHandler(inner)
{
    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken ct)
    {
        long sent = Out.NowNs();
        try
        {
            var r = await base.SendAsync(request, ct).ConfigureAwait(false);
            Out.Http(request.Method.Method, request.RequestUri!, request.Headers.Contains("Metadata"), (int)r.StatusCode, null, sent);
            return r;
        }
        catch (Exception e)
        {
            Out.Http(request.Method.Method, request.RequestUri!, request.Headers.Contains("Metadata"), 0, e, sent);
            throw;
        }
    }
}

internal static class Out
{
    private static readonly object s_lock = new();
    public static bool Observe;

    /// <summary>CLOCK_MONOTONIC in nanoseconds, the clock of Python's time.monotonic_ns().</summary>
    public static long NowNs() => (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency));

    public static void Write(JsonObject o)
    {
        o["t_ns"] = NowNs();
        lock (s_lock)
        {
            Console.Out.WriteLine(o.ToJsonString());
            Console.Out.Flush();
        }
    }

    /// <summary>One attempt: sent at sentNs, answered (or failed) now, which is t_ns.</summary>
    public static void Http(string method, Uri uri, bool metadata, int status, Exception? e, long sentNs)
    {
        if (!Observe)
            return;
        Write(new JsonObject
        {
            ["event"] = "http",
            ["method"] = method,
            ["host"] = uri.Host,
            ["port"] = uri.Port,
            ["path"] = uri.AbsolutePath,
            // the query as it went on the wire: values, never a token or a secret
            ["query"] = uri.Query.TrimStart('?'),
            ["metadata"] = metadata,
            ["status"] = status,
            ["exception"] = e?.GetType().Name,
            ["sent_ns"] = sentNs,
        });
    }

    public static void Token(int n, string token, DateTimeOffset expiresOn, DateTimeOffset? refreshOn, string? type,
                             string? source = null)
    {
        var o = new JsonObject
        {
            ["event"] = "token",
            ["n"] = n,
            ["sha"] = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(token)))[..16].ToLowerInvariant(),
            ["expires_on"] = expiresOn.ToUnixTimeSeconds(),
            ["refresh_on"] = refreshOn?.ToUnixTimeSeconds(),
            ["now"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            ["token_type"] = type,
            ["source"] = source,
        };
        var claims = Claims(token);
        if (claims != null)
        {
            o["iat"] = claims["iat"]?.DeepClone();
            o["aud"] = claims["aud"]?.DeepClone();
            o["roles"] = claims["roles"]?.DeepClone();
            o["sub"] = claims["sub"]?.DeepClone();
        }
        Write(o);
    }

    public static void Error(int n, Exception e)
    {
        string msg = e.Message;
        Write(new JsonObject
        {
            ["event"] = "error",
            ["n"] = n,
            ["type"] = e.GetType().FullName,
            ["inner"] = e.InnerException?.GetType().FullName,
            ["message"] = msg.Length > 1500 ? msg[..1500] : msg,
        });
    }

    /// <summary>The payload of a JWT, or null for a token that is not one.</summary>
    private static JsonObject? Claims(string token)
    {
        var parts = token.Split('.');
        if (parts.Length != 3)
            return null;
        try
        {
            string b64 = parts[1].Replace('-', '+').Replace('_', '/');
            b64 += new string('=', (4 - b64.Length % 4) % 4);
            return JsonNode.Parse(Convert.FromBase64String(b64)) as JsonObject;
        }
        catch (Exception)
        {
            return null;
        }
    }
}
