// Package examples embeds authtap's example rule packs, so that tools such as
// `authtap demo` can use them without a checkout:
//
//	data, err := examples.FS.ReadFile("basic-users-tenants.yaml")
//
// Each pack's header comment describes the REST API it is written for.
package examples
