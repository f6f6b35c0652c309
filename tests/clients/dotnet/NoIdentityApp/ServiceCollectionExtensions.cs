using Microsoft.Extensions.Options;

namespace FunctionApp;

internal static class ServiceCollectionExtensions
{
    /// <summary>The options, validated at start, and the named "apim" client to the API.</summary>
    public static IServiceCollection RegisterDependencies(this IServiceCollection services, IConfigurationManager configuration)
    {
        services.AddOptionsWithValidateOnStart<ApiManagementOptions>()
                .BindConfiguration(ApiManagementOptions.SectionKey)
                .ValidateDataAnnotations();

        services.AddHttpClient("apim", (sp, client) =>
                {
                    var options = sp.GetRequiredService<IOptions<ApiManagementOptions>>().Value;
                    client.BaseAddress = new Uri(options.GatewayUrl);
                });

        return services;
    }
}
