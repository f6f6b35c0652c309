using FunctionApp;

// ASP.NET Core stands in for the Functions host: the same registrations, and
// one route for the function, bound where --urls says (127.0.0.1 in the tests).
var builder = WebApplication.CreateBuilder(args);
builder.Services.RegisterDependencies(builder.Configuration);
builder.Services.AddScoped<CallProtectedApiFunction>();

var app = builder.Build();
app.MapMethods("/api/CallProtectedApiFunction", ["GET", "POST", "DELETE"],
               (HttpRequest req, CallProtectedApiFunction function) => function.Run(req));
app.Run();
