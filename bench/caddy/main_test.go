package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestLoadCountsEveryResponse(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
		}
		_, _ = w.Write(staticBody)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	for i, tc := range []struct {
		req  []byte
		want int
	}{
		{getRequest(), http.StatusOK},
		{postRequest(), http.StatusCreated},
	} {
		r, err := load(addr, scenario{name: "t", req: tc.req, want: tc.want, conns: 2}, 200*time.Millisecond)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if r.n == 0 || r.bad != 0 {
			t.Fatalf("%d: n=%d bad=%d (status %d)", i, r.n, r.bad, r.firstBadStatus)
		}
		if r.p50 <= 0 || r.p99 < r.p50 {
			t.Fatalf("%d: p50 %s p99 %s", i, r.p50, r.p99)
		}
	}
	// a wrong status is counted, not hidden
	r, err := load(addr, scenario{name: "t", req: getRequest(), want: http.StatusCreated, conns: 1}, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.bad != r.n || r.firstBadStatus != http.StatusOK {
		t.Fatalf("bad=%d n=%d first=%d, want every response counted as unexpected 200", r.bad, r.n, r.firstBadStatus)
	}
}

func TestMedian(t *testing.T) {
	for i, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("%d: median(%v) = %v, want %v", i, tc.in, got, tc.want)
		}
	}
}

func TestCaddyConfig(t *testing.T) {
	for i, tc := range []struct {
		t        target
		worker   bool
		handlers []string
	}{
		{target{name: "plain", addr: "127.0.0.1:1", redisDB: -1}, false, []string{"reverse_proxy"}},
		{target{name: "authtap", addr: "127.0.0.1:2", redisDB: 0}, false, []string{"authtap", "reverse_proxy"}},
		{target{name: "authtap+worker", addr: "127.0.0.1:3", redisDB: 1}, true, []string{"authtap", "reverse_proxy"}},
	} {
		b, err := caddyConfig(&tc.t, "/tmp/x", "127.0.0.1:9", "127.0.0.1:6", "/tmp/x/rules.yaml", tc.worker)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Admin struct {
				Disabled bool `json:"disabled"`
			} `json:"admin"`
			Apps struct {
				Authtap *struct {
					Redis  string `json:"redis"`
					Worker struct {
						Enabled bool `json:"enabled"`
					} `json:"worker"`
				} `json:"authtap"`
				HTTP struct {
					Servers map[string]struct {
						Routes []struct {
							Handle []struct {
								Handler string `json:"handler"`
							} `json:"handle"`
						} `json:"routes"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		if !cfg.Admin.Disabled {
			t.Errorf("%d: admin not disabled", i)
		}
		var got []string
		for _, h := range cfg.Apps.HTTP.Servers["bench"].Routes[0].Handle {
			got = append(got, h.Handler)
		}
		if strings.Join(got, ",") != strings.Join(tc.handlers, ",") {
			t.Errorf("%d: handlers %v, want %v", i, got, tc.handlers)
		}
		if (cfg.Apps.Authtap != nil) != (tc.t.redisDB >= 0) {
			t.Fatalf("%d: authtap app present = %v", i, cfg.Apps.Authtap != nil)
		}
		if a := cfg.Apps.Authtap; a != nil && a.Worker.Enabled != tc.worker {
			t.Errorf("%d: worker enabled = %v, want %v", i, a.Worker.Enabled, tc.worker)
		}
	}
}

var sink int

func TestCPUTimeOfSelf(t *testing.T) {
	deadline := time.Now().Add(5 * time.Second)
	for cpuTime(os.Getpid()) == 0 && time.Now().Before(deadline) {
		for i := range 1_000_000 {
			sink += i * i
		}
	}
	if cpuTime(os.Getpid()) == 0 {
		t.Fatal("cpuTime of this process stayed 0")
	}
}
