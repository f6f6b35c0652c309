namespace FunctionApp;

/// <summary>
/// The function body: forwards the caller's method (GET, POST or DELETE) to
/// /protected through the "apim" client and hands back what the API answered.
/// </summary>
public class CallProtectedApiFunction
{
    private readonly IHttpClientFactory _httpClientFactory;

    public CallProtectedApiFunction(IHttpClientFactory httpClientFactory)
    {
        _httpClientFactory = httpClientFactory;
    }

    public async Task<IResult> Run(HttpRequest originalRequest)
    {
        using var httpClient = _httpClientFactory.CreateClient("apim");
        using var request = new HttpRequestMessage(new HttpMethod(originalRequest.Method), "/protected");
        if (HttpMethods.IsPost(originalRequest.Method))
        {
            request.Content = new StringContent("{\"sample\":true}", System.Text.Encoding.UTF8, "application/json");
        }
        using var result = await httpClient.SendAsync(request);
        var content = await result.Content.ReadAsStringAsync();
        return Results.Content(content, result.Content.Headers.ContentType?.ToString() ?? "text/plain", statusCode: (int)result.StatusCode);
    }
}
