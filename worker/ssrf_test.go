package worker

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestGuardDeniedRanges(t *testing.T) {
	g := newAddressGuard(nil)
	for i, tc := range []struct {
		addr    string
		blocked bool
	}{
		// IPv4 denied ranges, one address inside each.
		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"10.0.0.1", true},
		{"10.255.255.255", true},
		{"100.64.0.1", true},
		{"100.127.255.254", true},
		{"127.0.0.1", true},
		{"127.8.9.10", true},
		{"169.254.169.254", true}, // cloud metadata
		{"169.254.0.1", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"192.0.0.192", true},
		{"192.0.2.10", true},
		{"192.88.99.1", true},
		{"192.168.1.1", true},
		{"198.18.0.1", true},
		{"198.51.100.7", true},
		{"203.0.113.9", true},
		{"224.0.0.1", true},
		{"239.255.255.250", true},
		{"240.0.0.1", true},
		{"255.255.255.255", true},
		// IPv6 denied ranges.
		{"::", true},
		{"::1", true},
		{"::127.0.0.1", true}, // IPv4-compatible (deprecated)
		{"fc00::1", true},
		{"fd12:3456::1", true},
		{"fd00:ec2::254", true}, // AWS IMDS
		{"fe80::1", true},
		{"fe80::1%eth0", true},
		{"fec0::1", true},
		{"ff02::1", true},
		{"2001:db8::1", true},
		{"100::1", true},
		{"64:ff9b:1::1", true},
		// IPv4-mapped IPv6 forms of denied IPv4 addresses.
		{"::ffff:127.0.0.1", true},
		{"::ffff:10.0.0.1", true},
		{"::ffff:169.254.169.254", true},
		{"::ffff:192.168.0.1", true},
		{"::ffff:0.0.0.0", true},
		// IPv4 embedded in NAT64 and 6to4.
		{"64:ff9b::7f00:1", true},    // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", true}, // NAT64 of 169.254.169.254
		{"2002:c0a8:101::1", true},   // 6to4 of 192.168.1.1
		// Public addresses pass.
		{"8.8.8.8", false},
		{"1.1.1.1", false},
		{"93.184.216.34", false},
		{"100.63.255.255", false},
		{"100.128.0.0", false},
		{"172.15.255.255", false},
		{"172.32.0.0", false},
		{"192.169.0.1", false},
		{"223.255.255.255", false},
		{"::ffff:8.8.8.8", false},
		{"2606:4700:4700::1111", false},
		{"2a00:1450:4001:80b::200e", false},
		{"64:ff9b::808:808", false}, // NAT64 of 8.8.8.8
		{"2002:808:808::1", false},  // 6to4 of 8.8.8.8
	} {
		ip := netip.MustParseAddr(tc.addr)
		err := g.check(ip)
		if got := err != nil; got != tc.blocked {
			t.Errorf("%d %s: blocked=%v (%v), want %v", i, tc.addr, got, err, tc.blocked)
		}
		if err != nil && !errors.Is(err, ErrBlockedAddress) {
			t.Errorf("%d %s: error %v does not wrap ErrBlockedAddress", i, tc.addr, err)
		}
	}
	if err := g.check(netip.Addr{}); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("zero address: %v, want blocked", err)
	}
}

// TestGuardBlocksEveryDeniedRange checks the first and last address of every
// range DefaultDeniedRanges lists.
func TestGuardBlocksEveryDeniedRange(t *testing.T) {
	g := newAddressGuard(nil)
	for _, p := range DefaultDeniedRanges() {
		first := p.Masked().Addr()
		last := first
		for a := first; a.IsValid() && p.Contains(a); a = a.Next() {
			last = a
			if p.Bits() < p.Addr().BitLen()-8 {
				break // large range: the last address is checked below
			}
		}
		if p.Bits() < p.Addr().BitLen()-8 {
			b := first.AsSlice()
			for i := p.Bits(); i < len(b)*8; i++ {
				b[i/8] |= 1 << (7 - i%8)
			}
			last, _ = netip.AddrFromSlice(b)
		}
		for _, a := range []netip.Addr{first, last} {
			if err := g.check(a); !errors.Is(err, ErrBlockedAddress) {
				t.Errorf("%s in %s: %v, want blocked", a, p, err)
			}
		}
	}
	// Ranges listed in the brief, by a sample address each.
	for _, s := range []string{"2001::1", "2001:2::1", "64:ff9b:1::5", "::ffff:100.64.0.1", "::ffff:255.255.255.255"} {
		if err := g.check(netip.MustParseAddr(s)); !errors.Is(err, ErrBlockedAddress) {
			t.Errorf("%s: %v, want blocked", s, err)
		}
	}
}

func TestGuardAllowlist(t *testing.T) {
	g := newAddressGuard([]netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("127.0.0.1/32"),
		netip.MustParsePrefix("fd00:1::/32"),
		netip.MustParsePrefix("192.168.7.9/16"), // unmasked: treated as 192.168.0.0/16
		{},                                      // invalid: ignored
	})
	for i, tc := range []struct {
		addr    string
		blocked bool
	}{
		{"10.1.2.3", false},
		{"10.2.0.1", true},
		{"127.0.0.1", false},
		{"::ffff:127.0.0.1", false}, // mapped form of an allowed address
		{"127.0.0.2", true},
		{"::1", true},
		{"fd00:1::5", false},
		{"fd00:2::5", true},
		{"192.168.200.1", false},
		{"169.254.169.254", true},
		{"8.8.8.8", false},
	} {
		err := g.check(netip.MustParseAddr(tc.addr))
		if got := err != nil; got != tc.blocked {
			t.Errorf("%d %s: blocked=%v (%v), want %v", i, tc.addr, got, err, tc.blocked)
		}
	}
}

func TestDefaultDeniedRangesIsACopy(t *testing.T) {
	a := DefaultDeniedRanges()
	a[0] = netip.MustParsePrefix("8.0.0.0/8")
	b := DefaultDeniedRanges()
	if b[0] == a[0] {
		t.Fatal("DefaultDeniedRanges returned shared storage")
	}
	for _, want := range []string{"127.0.0.0/8", "::ffff:127.0.0.0/104", "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128", "100.64.0.0/10", "fd00:ec2::254/128"} {
		found := false
		for _, p := range b {
			if p.String() == want {
				found = true
			}
		}
		if !found {
			t.Errorf("DefaultDeniedRanges lacks %s", want)
		}
	}
}

// fakeLookup resolves names from a map, as a DNS server under test control.
func fakeLookup(m map[string][]string) func(context.Context, string, string) ([]netip.Addr, error) {
	return func(_ context.Context, _, host string) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, s := range m[host] {
			out = append(out, netip.MustParseAddr(s))
		}
		if out == nil {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return out, nil
	}
}

func TestGuardedDialer(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	names := map[string][]string{
		"loopback.test": {"127.0.0.1"},
		"rebind.test":   {"93.184.216.34", "127.0.0.1"}, // one public, one private answer
		"mapped.test":   {"::ffff:127.0.0.1"},
		"metadata.test": {"169.254.169.254"},
	}
	base := net.Dialer{Timeout: 2 * time.Second}

	for i, tc := range []struct {
		name    string
		allow   []netip.Prefix
		addr    string
		blocked bool
	}{
		{name: "loopback name", addr: "loopback.test:" + port, blocked: true},
		{name: "loopback literal", addr: "127.0.0.1:" + port, blocked: true},
		{name: "mapped literal", addr: "[::ffff:127.0.0.1]:" + port, blocked: true},
		{name: "rebinding name", addr: "rebind.test:" + port, blocked: true},
		{name: "mapped name", addr: "mapped.test:" + port, blocked: true},
		{name: "metadata name", addr: "metadata.test:80", blocked: true},
		{name: "allowlisted name", allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, addr: "loopback.test:" + port},
		{name: "allowlisted literal", allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, addr: "127.0.0.1:" + port},
	} {
		d := newGuardedDialer(newAddressGuard(tc.allow), base)
		d.lookup = fakeLookup(names)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := d.DialContext(ctx, "tcp", tc.addr)
		cancel()
		if c != nil {
			c.Close()
		}
		if tc.blocked {
			if !errors.Is(err, ErrBlockedAddress) {
				t.Errorf("%d %s: err %v, want ErrBlockedAddress", i, tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%d %s: %v", i, tc.name, err)
		}
	}

	// The Control hook checks the socket address right before connect,
	// even if name resolution were bypassed.
	d := newGuardedDialer(newAddressGuard(nil), base)
	if _, err := d.dialer.Dial("tcp", ln.Addr().String()); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("raw dial through Control: err %v, want ErrBlockedAddress", err)
	}
	// An unknown name is a resolution error, not a block.
	d.lookup = fakeLookup(names)
	if _, err := d.DialContext(context.Background(), "tcp", "nowhere.test:443"); err == nil || errors.Is(err, ErrBlockedAddress) {
		t.Errorf("unknown name: err %v, want a resolution error", err)
	}
}

// Numeric host forms other than dotted decimal are refused whatever the
// mode, naming the address they stand for; names and canonical addresses
// pass (the guard checks those).
func TestNumericHostForms(t *testing.T) {
	for i, tc := range []struct{ host, want string }{
		{"2130706433", "read as 127.0.0.1"},
		{"127.1", "read as 127.0.0.1"},
		{"127.0.1", "read as 127.0.0.1"},
		{"0x7f.1", "read as 127.0.0.1"},
		{"0X7F.1", "read as 127.0.0.1"},
		{"0177.0.0.1", "read as 127.0.0.1"},
		{"127.0.0.1.", "read as 127.0.0.1"},
		{"0x7f000001", "read as 127.0.0.1"},
		{"017700000001", "read as 127.0.0.1"},
		{"0x7f.0.0.01", "read as 127.0.0.1"},
		{"0177.0x0.0.1", "read as 127.0.0.1"},
		{"127.000.000.001", "read as 127.0.0.1"},
		{"0xA9.0xFE.0xA9.0xFE", "read as 169.254.169.254"},
		{"169.254.43518", "read as 169.254.169.254"},
		{"2852039166", "read as 169.254.169.254"},
		{"10.1", "read as 10.0.0.1"},
		{"0x64.0x64.0x64.0xc8", "read as 100.100.100.200"},
		{"0", "read as 0.0.0.0"},
		{"0x", "read as 0.0.0.0"},
		{"%31%32%37.1", "does not parse"},                                // Go refuses escapes in a host name
		{"\uff11\uff12\uff17.\uff10.\uff10.\uff11", "read as 127.0.0.1"}, // full-width digits, mapped by IDNA
		{"1.2.3.4.5", "ends in a number but is not an IPv4 address"},
		{"256.1.1.1", "ends in a number but is not an IPv4 address"},
		{"1.2.3.256", "ends in a number but is not an IPv4 address"},
		{"4294967296", "ends in a number but is not an IPv4 address"},
		{"08.1.1.1", "ends in a number but is not an IPv4 address"},
		{"hooks.example.123", "ends in a number but is not an IPv4 address"},
		{"99999999999999999999999", "ends in a number but is not an IPv4 address"},
		{"[::ffff:127.0.0.1]", "IPv4-mapped IPv6 form of 127.0.0.1"},
		{"[::ffff:7f00:1]", "IPv4-mapped IPv6 form of 127.0.0.1"},
		{"[0:0:0:0:0:ffff:a9fe:a9fe]", "IPv4-mapped IPv6 form of 169.254.169.254"},
		{"[::ffff:0x7f.1]", "does not parse"}, // Go parses bracketed hosts strictly
		{"[127.0.0.1]", "does not parse"},
	} {
		for _, scheme := range []string{"https", "http"} {
			u := scheme + "://" + tc.host + ":8443/hook"
			err := ValidateEndpointURL(u, scheme == "https")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%d %s: %v, want %q", i, u, err, tc.want)
				continue
			}
			if _, ok := errors.AsType[*policyError](err); !ok {
				t.Errorf("%d %s: %v is not a policy (permanent) error", i, u, err)
			}
		}
	}
	for _, host := range []string{
		"127.0.0.1", "10.0.0.1", "93.184.216.34", "hooks.example.com", "hooks.example.com.", "0x7f.example.com",
		"1.2.3.4.nip.io", "123.example", "[::1]", "[2606:4700:4700::1111]", "[fe80::1%25eth0]", "[64:ff9b::7f00:1]",
		"xn--bcher-kva.example", "b\u00fccher.example",
	} {
		if err := ValidateEndpointURL("https://"+host+"/", true); err != nil {
			t.Errorf("%s: %v, want accepted (the address guard decides)", host, err)
		}
	}
}

// The test endpoints' guard lets loopback through and nothing else of the
// denied ranges, unless the allowlist opens them.
func TestTestAddressGuard(t *testing.T) {
	g := newTestAddressGuard(nil)
	for _, s := range []string{"127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "8.8.8.8"} {
		if err := g.check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s: %v, want allowed for test endpoints", s, err)
		}
	}
	for _, s := range []string{
		"10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "100.100.100.200", "192.0.0.192", "0.0.0.0",
		"fd00:ec2::254", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
		"64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "::7f00:1", "224.0.0.1",
	} {
		if err := g.check(netip.MustParseAddr(s)); !errors.Is(err, ErrBlockedAddress) {
			t.Errorf("%s: %v, want blocked for test endpoints", s, err)
		}
	}
	g = newTestAddressGuard([]netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")})
	if err := g.check(netip.MustParseAddr("10.1.2.3")); err != nil {
		t.Errorf("allowlisted 10.1.2.3: %v", err)
	}
	if err := g.check(netip.MustParseAddr("10.2.0.1")); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("10.2.0.1 outside the allowlist: %v", err)
	}
	// The live guard still refuses loopback.
	if err := newAddressGuard(nil).check(netip.MustParseAddr("127.0.0.1")); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("live guard, loopback: %v", err)
	}
}
