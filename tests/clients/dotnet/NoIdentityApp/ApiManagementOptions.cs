using System.ComponentModel.DataAnnotations;

namespace FunctionApp;

/// <summary>The ApiManagement section of the configuration.</summary>
public class ApiManagementOptions
{
    public const string SectionKey = "ApiManagement";

    [Required]
    public string GatewayUrl { get; set; } = string.Empty;
}
