package rules

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRouteShape(t *testing.T) {
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1XzEifQ.c2lnbmF0dXJl"
	for _, tc := range []struct{ path, want string }{
		{"/", "/"},
		{"", "/{id}"},
		{"*", "/{id}"},
		{"/api/users", "/api/users"},
		{"/api/users/", "/api/users/"},
		{"/api/users/123", "/api/users/{id}"},
		{"/api/users/u_1", "/api/users/{id}"},
		{"/api/users/usr_01J8ZQ4W3XKQ7M2N5P6R8S9T0V/password", "/api/users/{id}/password"},
		{"/v1/customers/cus_NffrFeUfNV2Hib", "/v1/customers/{id}"},
		{"/orgs/org-42/members/7", "/orgs/{id}/members/{id}"},
		{"/items/550e8400-e29b-41d4-a716-446655440000", "/items/{id}"},
		{"/items/550E8400-E29B-41D4-A716-446655440000", "/items/{id}"},
		{"/docs/5f2b9c1e8a7d6c5b4a3f2e1d", "/docs/{id}"},
		{"/docs/5f2b9c1e", "/docs/{id}"},
		{"/docs/deadbeef", "/docs/deadbeef"}, // a word of hex letters stays
		{"/users/a@x.test/roles", "/users/{id}/roles"},
		{"/invites/X7K2P9AB", "/invites/{id}"},
		{"/users/01HZY3K5Q8W2E4R6T8Y0U2I4O6", "/users/{id}"},
		{"/confirm/" + jwt, "/confirm/{id}"},
		{"/auth/sign-up", "/auth/sign-up"},
		{"/api-v2/users", "/api-v2/users"},
		{"/oauth2/token", "/oauth2/token"},
		{"/users/alice", "/users/alice"}, // not an id by its looks
		{"/a%20b/x", "/{id}/x"},          // a decoded path's literal %: not a path character
		{"/a b/x", "/{id}/x"},
		{"/a%b/x", "/{id}/x"},
		{"/{x}/y", "/{id}/y"},
		{"/caf\u00e9", "/{id}"},
		{"/x\x00y", "/{id}"},
		{"/" + strings.Repeat("a", 65), "/{id}"},
		{"/" + strings.Repeat("a", 40), "/{id}"},
		{"/" + strings.Repeat("a", 31), "/" + strings.Repeat("a", 31)},
		// after a password-like segment, anything but a plain word is a secret
		{"/reset-password/abcDEFghiJKL", "/reset-password/{id}"},
		{"/sessions/Ab-9xY", "/sessions/{id}"},
		{"/tokens/zzz.Y", "/tokens/{id}"},
		{"/password/reset", "/password/reset"},
		{"/sessions/current", "/sessions/current"},
		{"/tokens/", "/tokens/"},
		{"/users/Alice", "/users/Alice"},
	} {
		if got := RouteShape(tc.path); got != tc.want {
			t.Errorf("RouteShape(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestRouteShapeCapsSegments(t *testing.T) {
	path := strings.Repeat("/seg", 100)
	got := RouteShape(path)
	want := strings.Repeat("/seg", MaxShapeSegments) + "/" + ShapeRest
	if got != want {
		t.Errorf("RouteShape(100 segments) = %q, want %q", got, want)
	}
	// exactly MaxShapeSegments: no rest
	path = strings.Repeat("/seg", MaxShapeSegments)
	if got := RouteShape(path); got != path {
		t.Errorf("RouteShape(%d segments) = %q", MaxShapeSegments, got)
	}
}

// A hostile path cannot make a shape long, non-ASCII or an invalid template,
// however it is built.
func TestRouteShapeHostileBounded(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("abcXYZ019-_.~!$&'()*+,;=:@%/{} \x00\xff\xc3\xa9")
	maxLen := MaxShapeSegments*(MaxShapeSegmentLen+1) + len("/"+ShapeRest)
	for i := 0; i < 20000; i++ {
		n := r.IntN(3000)
		b := make([]byte, 1+n)
		b[0] = '/'
		for j := 1; j < len(b); j++ {
			b[j] = alphabet[r.IntN(len(alphabet))]
		}
		shape := RouteShape(string(b))
		if len(shape) > maxLen {
			t.Fatalf("shape of %d bytes: %d bytes, more than %d", len(b), len(shape), maxLen)
		}
		if !utf8.ValidString(shape) {
			t.Fatalf("shape %q is not UTF-8", shape)
		}
		for _, c := range []byte(shape) {
			if c < 0x21 || c > 0x7e || c == '%' {
				t.Fatalf("shape %q holds byte %#x", shape, c)
			}
		}
		if _, err := parsePathTmpl(shape); err != nil && !strings.Contains(err.Error(), "appears twice") {
			t.Fatalf("shape %q is not a path template: %v", shape, err)
		}
	}
}

func TestRouteShapeAllocatesNothing(t *testing.T) {
	buf := make([]byte, 0, 2048)
	paths := []string{"/api/users/u_123/password", "/reset-password/abcDEFghiJKL", "/orgs/org-42/members/7"}
	if n := testing.AllocsPerRun(100, func() {
		for _, p := range paths {
			buf = AppendRouteShape(buf[:0], p)
		}
	}); n != 0 {
		t.Errorf("AppendRouteShape allocates %v times", n)
	}
}

func BenchmarkRouteShape(b *testing.B) {
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendRouteShape(buf[:0], "/api/users/usr_01J8ZQ4W3XKQ7M2N5P6R8S9T0V/password")
	}
}

// FuzzRouteShape: whatever the path, a shape is short, printable ASCII, a
// valid path template, stable (the shape of a shape is itself), and a
// redacted sample path keeps the original's shape or redacts a segment.
func FuzzRouteShape(f *testing.F) {
	for _, s := range []string{"/", "/api/users/u_1/password", "/reset-password/abcDEF123", "/a b/%zz/{x}", "/" + strings.Repeat("x/", 40), "/caf\u00e9/\xff"} {
		f.Add(s)
	}
	maxLen := MaxShapeSegments*(MaxShapeSegmentLen+1) + len("/"+ShapeRest)
	f.Fuzz(func(t *testing.T, path string) {
		shape := RouteShape(path)
		if len(shape) > maxLen || shape == "" || shape[0] != '/' {
			t.Fatalf("RouteShape(%q) = %q", path, shape)
		}
		for _, c := range []byte(shape) {
			if c < 0x21 || c > 0x7e || c == '%' {
				t.Fatalf("RouteShape(%q) = %q holds %#x", path, shape, c)
			}
		}
		if _, err := parsePathTmpl(shape); err != nil && !strings.Contains(err.Error(), "appears twice") {
			t.Fatalf("RouteShape(%q) = %q: %v", path, shape, err)
		}
		if again := RouteShape(shape); again != shape {
			t.Fatalf("RouteShape(RouteShape(%q)) = %q, not %q", path, again, shape)
		}
		if red := RedactPath(path); RouteShape(red) != shape && !strings.Contains(red, Redacted) {
			t.Fatalf("RedactPath(%q) = %q changed the shape %q", path, red, shape)
		}
	})
}
