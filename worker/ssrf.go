package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/net/idna"
)

// ErrBlockedAddress is wrapped by every error that stops a delivery because
// its destination resolves to an address that endpoints of its mode may not
// reach (see DefaultDeniedRanges; test endpoints may reach loopback). Such a
// delivery fails permanently: it is recorded and archived, never retried.
// Test with errors.Is.
var ErrBlockedAddress = errors.New("destination address is not allowed")

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

// addressGuard decides whether a delivery may connect to an address.
type addressGuard struct {
	denied  []netip.Prefix
	allowed []netip.Prefix
	// loopback lets loopback addresses (127.0.0.0/8, ::1, and their
	// IPv4-mapped forms) through: the test endpoints' guard.
	loopback bool
}

// newTestAddressGuard returns the test endpoints' guard: the live guard that
// also lets loopback through, so that a local receiver can be tested while
// private, link-local and metadata addresses stay out of reach.
func newTestAddressGuard(allow []netip.Prefix) *addressGuard {
	g := newAddressGuard(allow)
	g.loopback = true
	return g
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
	if g.loopback && ip.Unmap().IsLoopback() {
		return nil
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

// literalAddressError returns, for an endpoint URL whose host is a literal
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

// addressError words err, from literalAddressError, for whoever configures
// an endpoint of mode (live or test) at raw.
func addressError(raw, mode string, err error) error {
	if mode == "" {
		mode = "live"
	}
	hint := ""
	if u, perr := url.Parse(raw); perr == nil && mode == "live" {
		if ip, perr := netip.ParseAddr(u.Hostname()); perr == nil && ip.Unmap().IsLoopback() {
			hint = ", or make it a test endpoint (test endpoints may reach loopback)"
		}
	}
	return fmt.Errorf("%s endpoint URL %q: %w; the worker never delivers there: allow the range (the worker's allow option)%s",
		mode, MaskURL(raw), err, hint)
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

// hostFormError refuses the host of an endpoint URL when it is written in a
// form that browsers, resolvers and this guard could read differently, so
// that what is checked is what is dialed:
//
//   - a host whose last label is a number (decimal, octal "0177" or hex
//     "0x7f"), the WHATWG URL rule for an IPv4 address, unless it is the
//     canonical dotted-decimal form: "2130706433", "127.1", "0x7f.1",
//     "0177.0.0.1", "127.0.0.1." all mean 127.0.0.1 to a browser or to
//     getaddrinfo, and are names to a DNS resolver. The error says which
//     address the form stands for and asks for dotted decimal; a name such
//     as "foo.123" that is no address at all is refused too (browsers refuse
//     it);
//   - a bracketed host that is not an IPv6 address ("[0x7f.1]"), and an
//     IPv4-mapped IPv6 address ("[::ffff:127.0.0.1]"), which is an IPv4
//     address written the long way.
//
// A non-ASCII host is first mapped as the HTTP transport maps it (IDNA, so
// full-width digits become ASCII ones). u is a parsed endpoint URL.
func hostFormError(u *url.URL) error {
	host := u.Hostname()
	if strings.HasPrefix(u.Host, "[") {
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() {
			return hostFormErrorf("host %q is not an IPv6 address", "["+host+"]")
		}
		if ip.Is4In6() {
			return hostFormErrorf("host %q is an IPv4-mapped IPv6 form of %s; write the IPv4 address in dotted decimal",
				"["+host+"]", ip.Unmap())
		}
		return nil
	}
	ascii := host
	if !isASCII(host) {
		mapped, err := idna.Lookup.ToASCII(host)
		if err != nil {
			return hostFormErrorf("host %q is not a valid internationalized host name: %v", host, err)
		}
		ascii = mapped
	}
	ascii = strings.ToLower(ascii)
	labels := strings.Split(strings.TrimSuffix(ascii, "."), ".")
	if !isNumericLabel(labels[len(labels)-1]) {
		return nil
	}
	if ip, err := netip.ParseAddr(ascii); err == nil && ip.Is4() && ip.String() == ascii && ascii == host {
		return nil // canonical dotted decimal
	}
	if ip, ok := parseWHATWGIPv4(ascii); ok {
		return hostFormErrorf("host %q is a numeric IPv4 form browsers and resolvers read as %s; write the address in dotted decimal", host, ip)
	}
	return hostFormErrorf("host %q ends in a number but is not an IPv4 address (browsers refuse it, resolvers disagree on it)", host)
}

// IsHostFormError reports whether err (from ValidateEndpointURL) refuses the
// way a URL's host is written (a numeric IPv4 form, an invalid IDN, …) rather
// than the URL's shape.
func IsHostFormError(err error) bool {
	_, ok := errors.AsType[*hostFormErr](err)
	return ok
}

// hostFormErr is the policy error hostFormError returns.
type hostFormErr struct{ msg string }

func (e *hostFormErr) Error() string { return e.msg }

func hostFormErrorf(format string, a ...any) error {
	return &policyError{err: &hostFormErr{msg: fmt.Sprintf(format, a...)}}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// isNumericLabel reports whether a host label is a number in the WHATWG
// sense: decimal digits, or "0x" followed by hex digits (possibly none).
func isNumericLabel(l string) bool {
	if l == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(l, "0x"); ok {
		return strings.Trim(rest, "0123456789abcdef") == ""
	}
	return strings.Trim(l, "0123456789") == ""
}

// parseWHATWGIPv4 reads host (lower case ASCII) as the WHATWG URL standard's
// IPv4 parser (and inet_aton) do: one to four dot-separated parts, each
// decimal, octal (leading 0) or hex (0x), the last filling the remaining
// bytes, and one trailing dot allowed.
func parseWHATWGIPv4(host string) (netip.Addr, bool) {
	parts := strings.Split(strings.TrimSuffix(host, "."), ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, p := range parts {
		base := 10
		switch {
		case strings.HasPrefix(p, "0x"):
			base, p = 16, p[2:]
			if p == "" {
				p = "0"
			}
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		if p == "" {
			return netip.Addr{}, false
		}
		n, err := strconv.ParseUint(p, base, 64)
		if err != nil {
			return netip.Addr{}, false
		}
		nums[i] = n
	}
	last := nums[len(nums)-1]
	if last >= 1<<(8*(5-len(nums))) {
		return netip.Addr{}, false
	}
	v := last
	for i, n := range nums[:len(nums)-1] {
		if n > 255 {
			return netip.Addr{}, false
		}
		v += n << (8 * (3 - i))
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// MaskURL is raw with any user information masked, for messages; "" when
// raw does not parse.
func MaskURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	if u.User != nil {
		u.User = url.User("xxxxx")
	}
	return u.String()
}
