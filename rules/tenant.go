package rules

import "fmt"

// MaxTenantLen is the longest tenant id, in bytes, an event or an endpoint
// may carry (128). A rendered tenant longer than this is not a tenant.
const MaxTenantLen = 128

// TenantMissing is the entry added to an event's source.missing when its
// rule's emit.tenant rendered to something that is not a valid tenant id
// (ValidTenant). Such an event is emitted without a tenant, that is, for
// operator endpoints only: it never reaches a tenant's endpoints, and the
// entry tells the operator why.
const TenantMissing = "emit.tenant"

// ValidTenant reports whether s is a tenant id: 1 to MaxTenantLen bytes of
// ASCII letters, digits and _ - . : @. Ids are compared exactly, so "T1" and
// "t1" are two tenants; spaces and every other byte are refused, so "t1 "
// is not a tenant at all.
func ValidTenant(s string) error {
	if s == "" {
		return fmt.Errorf("tenant is empty")
	}
	if len(s) > MaxTenantLen {
		return fmt.Errorf("tenant is %d bytes, longer than %d", len(s), MaxTenantLen)
	}
	for i := 0; i < len(s); i++ {
		if !tenantByte(s[i]) {
			return fmt.Errorf("tenant %s has byte %q at %d; want letters, digits and _-.:@", QuoteCut(s), s[i], i)
		}
	}
	return nil
}

func tenantByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '_', '-', '.', ':', '@':
		return true
	}
	return false
}
