package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for i, tc := range []struct {
		input   string
		want    Handler
		wantErr string
	}{
		{input: `authtap {
			rules /etc/authtap/a.yaml /etc/authtap/*.json
			source legacy-auth
			mode test
			max_body 1MiB
			lookup_upstream http://127.0.0.1:9000
			before_lookup_budget 1500ms
			reload_interval 500ms
		}`, want: Handler{
			Rules: []string{"/etc/authtap/a.yaml", "/etc/authtap/*.json"}, Source: "legacy-auth", Mode: "test",
			MaxBody: 1 << 20, LookupUpstream: "http://127.0.0.1:9000", ReloadInterval: caddy.Duration(500 * time.Millisecond),
			BeforeLookupBudget: caddy.Duration(1500 * time.Millisecond),
		}},
		{input: "authtap {\n rules a.yaml\n rules b.yaml\n max_body 64KB\n reload_interval off\n}",
			want: Handler{Rules: []string{"a.yaml", "b.yaml"}, MaxBody: 64000, ReloadInterval: -1}},
		{input: "authtap {\n max_body 4096\n rules r.yaml\n}", want: Handler{Rules: []string{"r.yaml"}, MaxBody: 4096}},
		{input: "authtap", wantErr: "missing rules"},
		{input: "authtap r.yaml", wantErr: `unexpected argument "r.yaml"`},
		{input: "authtap {\n source x\n}", wantErr: "missing rules"},
		{input: "authtap {\n rules r.yaml\n colour blue\n}", wantErr: `unrecognized authtap option "colour"`},
		{input: "authtap {\n rules r.yaml\n mode prod\n}", wantErr: `mode: want live or test, got "prod"`},
		{input: "authtap {\n rules r.yaml\n max_body lots\n}", wantErr: `max_body: want a size such as 1MiB or 65536, got "lots"`},
		{input: "authtap {\n rules r.yaml\n max_body 0\n}", wantErr: `max_body`},
		{input: "authtap {\n rules r.yaml\n max_body 1MiB 2MiB\n}", wantErr: "wrong argument count"},
		{input: "authtap {\n rules r.yaml\n reload_interval soon\n}", wantErr: `reload_interval: want a duration`},
		{input: "authtap {\n rules r.yaml\n reload_interval -2s\n}", wantErr: `reload_interval: want a duration`},
		{input: "authtap {\n rules r.yaml\n lookup_upstream ftp://x\n}", wantErr: `lookup_upstream: want an http:// or https:// URL`},
		{input: "authtap {\n rules r.yaml\n source\n}", wantErr: "wrong argument count"},
		{input: "authtap {\n rules r.yaml\n before_lookup_budget 11s\n}", wantErr: `before_lookup_budget: want a duration from 1ms to 10s such as 2s, got "11s"`},
		{input: "authtap {\n rules r.yaml\n before_lookup_budget 0s\n}", wantErr: `before_lookup_budget: want a duration`},
		{input: "authtap {\n rules r.yaml\n before_lookup_budget soon\n}", wantErr: `before_lookup_budget: want a duration`},
		{input: "authtap {\n rules r.yaml\n before_lookup_budget\n}", wantErr: "wrong argument count"},
		{input: "authtap {\n rules\n}", wantErr: "wrong argument count"},
		{input: "authtap {\n rules r.yaml\n mode\n}", wantErr: "wrong argument count"},
		{input: "authtap {\n rules r.yaml\n source a b\n}", wantErr: "wrong argument count"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%d: err = %v, want %q", i, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if strings.Join(h.Rules, ",") != strings.Join(tc.want.Rules, ",") || h.Source != tc.want.Source || h.Mode != tc.want.Mode ||
			h.MaxBody != tc.want.MaxBody || h.LookupUpstream != tc.want.LookupUpstream || h.ReloadInterval != tc.want.ReloadInterval ||
			h.BeforeLookupBudget != tc.want.BeforeLookupBudget {
			t.Errorf("%d: got %+v, want %+v", i, h, tc.want)
		}
	}
}

func TestUnmarshalCaddyfileCoverage(t *testing.T) {
	for i, tc := range []struct {
		input   string
		want    *CoverageConfig
		wantErr string
	}{
		{input: "authtap {\n rules r.yaml\n}", want: nil},
		{input: "authtap {\n rules r.yaml\n coverage off\n}", want: &CoverageConfig{Disabled: true}},
		{input: "authtap {\n rules r.yaml\n coverage on\n}", want: &CoverageConfig{}},
		{input: "authtap {\n rules r.yaml\n coverage {\n samples 5\n }\n}", want: &CoverageConfig{Samples: 5}},
		{input: "authtap {\n rules r.yaml\n coverage {\n samples 0\n }\n}", want: &CoverageConfig{Samples: -1}},
		{input: "authtap {\n rules r.yaml\n coverage {\n samples 11\n }\n}", wantErr: "coverage: samples: want a number from 0 (count only) to 10"},
		{input: "authtap {\n rules r.yaml\n coverage {\n samples -1\n }\n}", wantErr: "coverage: samples: want a number"},
		{input: "authtap {\n rules r.yaml\n coverage {\n samples\n }\n}", wantErr: "wrong argument count"},
		{input: "authtap {\n rules r.yaml\n coverage {\n sample 3\n }\n}", wantErr: `coverage: unrecognized option "sample"`},
		{input: "authtap {\n rules r.yaml\n coverage maybe\n}", wantErr: `coverage: want off, on or a block, got "maybe"`},
		{input: "authtap {\n rules r.yaml\n coverage off on\n}", wantErr: "wrong argument count"},
		{input: "authtap {\n rules r.yaml\n coverage off {\n samples 2\n }\n}", wantErr: "samples given with coverage off"},
		{input: "authtap {\n rules r.yaml\n coverage off\n coverage on\n}", wantErr: "coverage given more than once"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%d: err = %v, want %q", i, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if (h.Coverage == nil) != (tc.want == nil) || h.Coverage != nil && *h.Coverage != *tc.want {
			t.Errorf("%d: coverage = %+v, want %+v", i, h.Coverage, tc.want)
		}
	}
}
