//go:build tools

// The command this module builds, named so that `go mod tidy` keeps what it needs.
package helm

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
