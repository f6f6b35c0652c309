// adal-token: one managed-identity token from Go's go-autorest/adal (Debian's
// golang-github-azure-go-autorest-dev), the way tools built on it get theirs:
// NewServicePrincipalTokenFromManagedIdentity picks IMDS, App Service
// 2017-09-01 (MSI_ENDPOINT + MSI_SECRET) or Cloud Shell (MSI_ENDPOINT alone)
// from the environment.  Built and run by tests/integration/test_legacy_clients.py.
//
// Usage: adal-token RESOURCE [client_id=ID | res_id=ARM-ID]
// Prints one JSON line: the SHA-256 of the token (never the token), expires_on
// as adal keeps it (epoch seconds), resource and token_type; exits 1 with the
// error on stdout.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/Azure/go-autorest/autorest/adal"
)

func fail(err error) {
	out, _ := json.Marshal(map[string]string{"error": err.Error()})
	fmt.Println(string(out))
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: adal-token RESOURCE [client_id=ID|res_id=ARM-ID]")
		os.Exit(2)
	}
	opts := &adal.ManagedIdentityOptions{}
	if len(os.Args) > 2 {
		kv := strings.SplitN(os.Args[2], "=", 2)
		switch kv[0] {
		case "client_id":
			opts.ClientID = kv[1]
		case "res_id":
			opts.IdentityResourceID = kv[1]
		default:
			fmt.Fprintln(os.Stderr, "unknown selector", kv[0])
			os.Exit(2)
		}
	}
	spt, err := adal.NewServicePrincipalTokenFromManagedIdentity(os.Args[1], opts)
	if err != nil {
		fail(err)
	}
	spt.MaxMSIRefreshAttempts = 1
	if err := spt.Refresh(); err != nil {
		fail(err)
	}
	t := spt.Token()
	sum := sha256.Sum256([]byte(t.AccessToken))
	out, _ := json.Marshal(map[string]string{
		"sha256":     hex.EncodeToString(sum[:]),
		"expires_on": string(t.ExpiresOn),
		"resource":   t.Resource,
		"token_type": t.Type,
	})
	fmt.Println(string(out))
}
