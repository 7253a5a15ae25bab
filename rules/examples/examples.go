package examples

import "embed"

// FS holds the example rule packs (*.yaml).
//
//go:embed *.yaml
var FS embed.FS
