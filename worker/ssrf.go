package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"syscall"
)

// ErrBlockedAddress is wrapped by every error that stops a live delivery
// because its destination resolves to an address that live endpoints may not
// reach (see DefaultDeniedRanges). Test with errors.Is.
var ErrBlockedAddress = errors.New("destination address is not allowed for live endpoints")

// deniedV4 are the IPv4 ranges a live endpoint may not reach.
var deniedV4 = []string{
	"0.0.0.0/8",          // "this network", includes the unspecified address
	"10.0.0.0/8",         // RFC 1918 private
	"100.64.0.0/10",      // RFC 6598 carrier-grade NAT
	"127.0.0.0/8",        // loopback
	"169.254.0.0/16",     // link-local, includes cloud metadata 169.254.169.254
	"172.16.0.0/12",      // RFC 1918 private
	"192.0.0.0/24",       // IETF protocol assignments (includes 192.0.0.192 Oracle metadata)
	"192.0.2.0/24",       // TEST-NET-1 documentation
	"192.88.99.0/24",     // deprecated 6to4 relay anycast
	"192.168.0.0/16",     // RFC 1918 private
	"198.18.0.0/15",      // benchmarking
	"198.51.100.0/24",    // TEST-NET-2 documentation
	"203.0.113.0/24",     // TEST-NET-3 documentation
	"224.0.0.0/4",        // multicast
	"240.0.0.0/4",        // reserved, includes 255.255.255.255 broadcast
	"255.255.255.255/32", // limited broadcast (explicit, also in 240/4)
}

// deniedV6 are the IPv6 ranges a live endpoint may not reach, in addition to
// the IPv4-mapped (::ffff:0:0/96) forms of deniedV4.
var deniedV6 = []string{
	"::/128",            // unspecified
	"::1/128",           // loopback
	"::/96",             // deprecated IPv4-compatible addresses
	"64:ff9b:1::/48",    // local-use NAT64 (RFC 8215)
	"100::/64",          // discard-only
	"2001::/23",         // IETF protocol assignments (Teredo, ORCHID, benchmarking)
	"2001:db8::/32",     // documentation
	"fc00::/7",          // unique local addresses
	"fd00:ec2::254/128", // AWS IMDS over IPv6 (inside fc00::/7, listed for clarity)
	"fe80::/10",         // link-local
	"fec0::/10",         // deprecated site-local
	"ff00::/8",          // multicast
}

// DefaultDeniedRanges returns the address ranges a live endpoint may not
// reach unless SenderOptions.Allowlist opens them: loopback, RFC 1918,
// carrier-grade NAT, link-local (with cloud metadata addresses), multicast,
// unspecified, broadcast, documentation and reserved IPv4 ranges, and for
// IPv6 loopback, unspecified, unique local (fc00::/7), link-local
// (fe80::/10), site-local, multicast, documentation, local NAT64, and the
// IPv4-mapped form of every IPv4 range. The guard also looks inside NAT64
// (64:ff9b::/96) and 6to4 (2002::/16) addresses at the IPv4 address they
// embed. The slice is a fresh copy on each call.
func DefaultDeniedRanges() []netip.Prefix {
	out := make([]netip.Prefix, 0, 2*len(deniedV4)+len(deniedV6))
	for _, s := range deniedV4 {
		p := netip.MustParsePrefix(s)
		out = append(out, p)
		// IPv4-mapped IPv6 form: ::ffff:a.b.c.d/(96+bits).
		mapped := netip.AddrFrom16(p.Addr().As16())
		out = append(out, netip.PrefixFrom(mapped, 96+p.Bits()))
	}
	for _, s := range deniedV6 {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

var (
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

// addressGuard decides whether a live delivery may connect to an address.
type addressGuard struct {
	denied  []netip.Prefix
	allowed []netip.Prefix
}

func newAddressGuard(allow []netip.Prefix) *addressGuard {
	g := &addressGuard{denied: DefaultDeniedRanges()}
	for _, p := range allow {
		if p.IsValid() {
			g.allowed = append(g.allowed, p.Masked())
		}
	}
	return g
}

// check returns nil when ip may be reached, or an error wrapping
// ErrBlockedAddress.
func (g *addressGuard) check(ip netip.Addr) error {
	if !ip.IsValid() {
		return fmt.Errorf("invalid address: %w", ErrBlockedAddress)
	}
	ip = ip.WithZone("")
	// Every form of the same address is checked: as given, and unmapped.
	// An allowlist entry may name either form.
	forms := []netip.Addr{ip}
	if ip.Is4In6() {
		forms = append(forms, ip.Unmap())
	}
	if ip.Is6() && !ip.Is4In6() {
		if v4, ok := embeddedV4(ip); ok {
			forms = append(forms, v4)
		}
	}
	for _, f := range forms {
		if g.isAllowed(f) {
			return nil
		}
	}
	for _, f := range forms {
		for _, p := range g.denied {
			if p.Contains(f) {
				return fmt.Errorf("address %s is in denied range %s: %w", ip, p, ErrBlockedAddress)
			}
		}
	}
	return nil
}

func (g *addressGuard) isAllowed(ip netip.Addr) bool {
	for _, p := range g.allowed {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// literalAddressError returns, for a live endpoint URL whose host is a literal
// IP address that the guard refuses, the error saying so; nil otherwise (a
// host name, an address the guard lets through, or a URL that does not
// parse, which ValidateEndpointURL reports).
func (g *addressGuard) literalAddressError(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return nil
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return nil
	}
	return g.check(ip)
}

// liveAddressError words err, from literalAddressError, for whoever configures
// the endpoint.
func liveAddressError(raw string, err error) error {
	return fmt.Errorf("live endpoint URL %q: %w; the worker never delivers there: allow the range (the worker's allow option) or make it a test endpoint",
		shownURL(raw), err)
}

// embeddedV4 returns the IPv4 address a NAT64 (64:ff9b::/96) or 6to4
// (2002::/16) address carries.
func embeddedV4(ip netip.Addr) (netip.Addr, bool) {
	b := ip.As16()
	switch {
	case nat64Prefix.Contains(ip):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

// guardedDialer resolves a host itself, checks every resolved address with
// the guard and only then connects, to the checked address. The dialer's
// Control hook checks the socket address once more right before connect, so
// neither DNS rebinding nor a resolver surprise can reach a denied address.
type guardedDialer struct {
	guard  *addressGuard
	dialer *net.Dialer
	// lookup resolves a host name; net.DefaultResolver.LookupNetIP unless
	// a test injects a fake.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
}

func newGuardedDialer(g *addressGuard, base net.Dialer) *guardedDialer {
	d := base
	d.Control = func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("parsing dial address %q: %w", address, ErrBlockedAddress)
		}
		return g.check(ap.Addr())
	}
	return &guardedDialer{guard: g, dialer: &d, lookup: net.DefaultResolver.LookupNetIP}
}

// DialContext has the signature of http.Transport.DialContext.
func (d *guardedDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", address, err)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = d.lookup(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("resolving %s: no addresses", host)
		}
	}
	for i, ip := range ips {
		ips[i] = ip.Unmap() // the resolver reports IPv4 answers in mapped form
	}
	// Refuse the host when any of its addresses is denied: a name that
	// mixes public and private addresses is a rebinding attempt or a
	// misconfiguration, never something to connect to at random.
	for _, ip := range ips {
		if err := d.guard.check(ip); err != nil {
			return nil, fmt.Errorf("connecting to %s: %w", host, err)
		}
	}
	var firstErr error
	for _, ip := range ips {
		conn, err := d.dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}
