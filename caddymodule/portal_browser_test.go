package caddymodule

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// verifyingReceiver is a subscriber that checks the Standard Webhooks
// signature of every delivery with the secret it was given (the one the
// portal showed once), answering 200 only to deliveries that verify.
type verifyingReceiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	secret   string
	verified []string // webhook-id of each verified delivery
	rejected []string // why each other delivery was refused
}

func newVerifyingReceiver(t *testing.T) *verifyingReceiver {
	r := &verifyingReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		r.mu.Lock()
		defer r.mu.Unlock()
		wh, err := standardwebhooks.NewWebhook(r.secret)
		if err == nil {
			err = wh.Verify(body, req.Header)
		}
		if err != nil {
			r.rejected = append(r.rejected, err.Error())
			http.Error(w, "signature does not verify", http.StatusBadRequest)
			return
		}
		r.verified = append(r.verified, req.Header.Get("webhook-id"))
		_, _ = io.WriteString(w, "verified "+req.Header.Get("webhook-id"))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *verifyingReceiver) setSecret(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secret = s
}

func (r *verifyingReceiver) results() (verified, rejected []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.verified...), append([]string(nil), r.rejected...)
}

// screenshotDir is where the browser tests write their screenshots: the
// directory in $AUTHTAP_SCREENSHOTS, or a new one under the system's temp
// directory. It is kept after the test (for a reviewer) and never in the
// repository.
func screenshotDir(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("AUTHTAP_SCREENSHOTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "authtap-"+name+"-"); err != nil {
			t.Fatal(err)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// expiredPortalToken signs, with the portal key kept in Redis, a token whose
// expiry has passed: what a link becomes once its ttl is over (the shortest
// ttl the API issues is a minute, too long to wait for). It follows the
// token's format: "atp1." + base64url(claims) + "." + base64url(HMAC-SHA256).
func expiredPortalToken(t *testing.T, redisAddr, tenant string) string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	ctx := context.Background()
	kid, err := rdb.Get(ctx, "authtap:{authtap-portal}:key").Result()
	if err != nil {
		t.Fatalf("reading the portal key id: %v", err)
	}
	b64, err := rdb.HGet(ctx, "authtap:{authtap-portal}:keys", kid).Result()
	if err != nil {
		t.Fatalf("reading the portal key: %v", err)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"kid": kid, "id": "pl_expiredbrowsertest", "tnt": tenant,
		"iat": now.Add(-2 * time.Hour).UnixMilli(), "exp": now.Add(-time.Hour).UnixMilli(),
	})
	body := "atp1." + base64.RawURLEncoding.EncodeToString(claims)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(body))
	return body + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// portalTestRules say whose events sign-ups are (the organization in the
// request), describe each type and give an example, for the catalog.
const portalTestRules = `version: 1
rules:
  - name: user-created
    description: A user signed up in one of your organizations.
    match: {method: POST, path: /api/users}
    emit:
      type: user.created
      mode: test
      tenant: "{request.body.org}"
      subject: "{response.body.id}"
      data: {id: "{response.body.id}", email: "{request.body.email}"}
  - name: user-deleted
    description: A user was deleted.
    match: {method: DELETE, path: "/api/users/{id}"}
    emit: {type: user.deleted, mode: test, subject: "{path.id}", data: {id: "{path.id}"}}
tests:
  - name: a sign-up is its organization's
    request: {method: POST, path: /api/users, body: {org: acme, email: ada@acme.test, password: s3cret-pw}}
    response: {status: 201, body: {id: u_1}}
    expect: [{type: user.created, subject: u_1, tenant: acme, data: {id: u_1, email: ada@acme.test}}]
`

// TestPortalInBrowser opens portal links in headless Chromium, as a
// customer's admin would, against a real Caddy (authtap_portal and
// authtap_admin from a Caddyfile), a real Redis and the in-process worker:
// it creates an endpoint pointing at a local receiver, reads the secret the
// page shows once, sends a test event and sees it delivered and verified;
// then a second tenant's link shows none of it, and an expired link is
// refused. Screenshots go to screenshotDir.
func TestPortalInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test: runs Chromium, Caddy and Redis")
	}
	env := startAdminCaddy(t, adminCaddyOptions{site: portalSite, global: "worker", rules: portalTestRules})
	rcv := newVerifyingReceiver(t)
	shots := screenshotDir(t, "portal-screenshots")

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	bctx := startChromium(t, ctx)

	if err := chromedp.Do(bctx, chromedp.EmulateViewport(1024, 900)); err != nil {
		t.Fatalf("starting chromium (%s): %v", chromiumPath, err)
	}

	// Anything the page writes to the console (subscribed once the browser runs) (a CSP violation, an
	// exception) fails the test.
	var consoleMu sync.Mutex
	var console []string
	go func() {
		for m, err := range chromedp.Console(bctx) {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException || m.Type == chromedp.ConsoleWarning {
				// The browser logs the refused API answers (401) as network errors: expected on the refusal pages.
				if m.Source == "network" {
					continue
				}
				consoleMu.Lock()
				console = append(console, m.String())
				consoleMu.Unlock()
			}
		}
	}()

	shoot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			return
		}
		if err := os.WriteFile(filepath.Join(shots, name), png, 0o644); err != nil {
			t.Error(err)
		}
	}
	text := func() string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
		if err != nil {
			t.Fatalf("reading the page: %v", err)
		}
		return s
	}
	waitFor := func(what, js string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ok, err := chromedp.Run(bctx, chromedp.Evaluate[bool](js))
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				shoot("failed.png")
				t.Fatalf("the page never showed %s (%v); it shows:\n%s", what, err, text())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, actions...); err != nil {
			shoot("failed.png")
			t.Fatalf("%s: %v\npage:\n%s", what, err, text())
		}
	}

	acme := env.issuePortalLink(`{"tenant":"acme"}`)
	globex := env.issuePortalLink(`{"tenant":"globex"}`)

	// 1. The link opens the tenant's (empty) portal; the token leaves the address bar.
	do("opening acme's link", chromedp.Navigate(acme.URL))
	waitFor("acme's portal", `document.body.dataset.ready === "true" && document.getElementById("session").textContent.includes("Tenant acme")`)
	if loc, _ := chromedp.Run(bctx, chromedp.Location()); strings.Contains(loc, "token") || loc != env.base+"/portal/" {
		t.Errorf("the address bar still shows %s", loc)
	}
	if !strings.Contains(text(), "No endpoints yet.") {
		t.Errorf("a new tenant's portal:\n%s", text())
	}
	shoot("1-empty-portal.png")

	// 2. Add an endpoint with the keyboard-reachable form: URL, an event type from the catalog.
	do("opening the form", chromedp.Click("#add-endpoint"))
	waitFor("the form, focused on the URL", `!document.getElementById("form-section").hidden && document.activeElement.id === "f-url"`)
	waitFor("the catalog's event types", `!!document.querySelector('#f-event-list input[value="user.created"]')`)
	do("opening an example payload", chromedp.Click(`#f-event-list .event-type:first-child summary`))
	waitFor("the catalog's description and example", `(() => {
		const row = document.querySelector("#f-event-list .event-type:first-child");
		return row.textContent.includes("A user signed up in one of your organizations.") &&
			row.querySelector("details").open && row.querySelector("pre").textContent.includes('"email": "ada@acme.test"');
	})()`)
	if s := text(); strings.Contains(s, "s3cret-pw") {
		t.Errorf("the catalog shows a test's password:\n%s", s)
	}
	do("filling in the form",
		chromedp.SendKeys("#f-url", rcv.srv.URL+"/hooks"),
		chromedp.SendKeys("#f-description", "CRM sync"),
		chromedp.Click(`#f-event-list input[value="user.created"]`),
	)
	shoot("2-add-endpoint.png")
	do("creating the endpoint", chromedp.Click("#f-submit"))
	waitFor("the secret, shown once", `!document.getElementById("secret-box").hidden && document.getElementById("secret-value").value.startsWith("whsec_")`)
	secret, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.getElementById("secret-value").value`))
	if err != nil {
		t.Fatal(err)
	}
	rcv.setSecret(secret)
	shoot("3-secret-shown-once.png")
	do("storing the secret", chromedp.Click("#secret-done"))
	waitFor("the endpoint's card", `document.querySelectorAll("#endpoints li.card").length === 1`)
	if s := text(); strings.Contains(s, secret) || !strings.Contains(s, rcv.srv.URL+"/hooks") || !strings.Contains(s, "user.created") {
		t.Errorf("after storing the secret the page shows:\n%s", s)
	}

	// 3. Traffic through Caddy: the sign-up at acme reaches acme's endpoint,
	// the one at globex does not.
	for _, org := range []string{"globex", "acme"} {
		resp, body := env.do("POST", "/api/users", `{"org":"`+org+`","email":"x@`+org+`.test","password":"pw"}`, false)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("sign-up at %s: %d %s", org, resp.StatusCode, body)
		}
	}
	do("opening the deliveries", chromedp.Click("#endpoints li.card button.deliveries"))
	const signupShown = `(() => {
		const rows = Array.from(document.querySelectorAll("#deliveries tbody tr"));
		return rows.length === 1 && rows[0].textContent.includes("user.created") && rows[0].textContent.includes("HTTP 200 · delivered");
	})()`
	for deadline := time.Now().Add(20 * time.Second); ; {
		// As a user would: refresh until the delivery shows.
		do("refreshing the deliveries", chromedp.Click("#d-refresh"))
		if ok, err := chromedp.Run(bctx, chromedp.Evaluate[bool](signupShown)); err == nil && ok {
			break
		}
		if time.Now().After(deadline) {
			shoot("failed.png")
			t.Fatalf("acme's sign-up was never shown delivered; the page shows:\n%s", text())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if verified, rejected := rcv.results(); len(verified) != 1 || len(rejected) != 0 {
		t.Fatalf("receiver verified %v, rejected %v; want acme's sign-up only", verified, rejected)
	}
	signup, _ := rcv.results()

	// 4. Send a test event: delivered, verified with the secret, shown with its attempt.
	do("sending a test event", chromedp.Click("#endpoints li.card button.test"))
	waitFor("the delivered test event", `Array.from(document.querySelectorAll("#deliveries tbody tr")).some(tr => tr.textContent.includes("webhook.test") && tr.textContent.includes("HTTP 200 · delivered"))`)
	verified, rejected := rcv.results()
	if len(verified) != 2 || len(rejected) != 0 {
		t.Fatalf("receiver verified %v, rejected %v; want the sign-up and the test event", verified, rejected)
	}
	verified = verified[1:]
	row, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector("#deliveries tbody tr").textContent`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(row, verified[0]) || !strings.Contains(row, "webhook.test") || !strings.Contains(row, " ms") {
		t.Errorf("the delivery row %q lacks the event id %s, its type or its latency", row, verified[0])
	}
	shoot("4-test-event-delivered.png")

	// Retry that delivery, then replay the last hour: two more, both verified.
	do("retrying the delivery", chromedp.Click("#deliveries tbody tr button.retry"))
	waitFor("the retried delivery", `document.querySelectorAll("#deliveries tbody tr").length === 3`)
	// Edit it to take every event type (a replay respects the filters; the
	// test event is a webhook.test).
	do("editing the endpoint", chromedp.Click("#endpoints li.card button.edit"))
	waitFor("the edit form", `document.getElementById("form-title").textContent === "Edit endpoint" && document.querySelector('#f-event-list input[value="user.created"]').checked`)
	do("clearing the filter", chromedp.Click(`#f-event-list input[value="user.created"]`), chromedp.Click("#f-submit"))
	waitFor("the saved endpoint", `document.querySelector("#endpoints li.card").textContent.includes("every event type")`)
	do("choosing the replay window", chromedp.Evaluate[chromedp.Void](`(() => {
		const d = new Date(Date.now() - 3600e3), p = (n) => String(n).padStart(2, "0");
		document.getElementById("r-since").value = d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + "T" + p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
	})()`), chromedp.Click("#r-submit"))
	waitFor("the replay's answer", `document.getElementById("status").textContent.startsWith("Replaying 2 events to ")`)
	waitFor("the replayed deliveries", `Array.from(document.querySelectorAll("#deliveries tbody tr")).filter(tr => tr.textContent.includes("(replay)")).length === 3`)
	if all, rejected := rcv.results(); len(all) != 5 || len(rejected) != 0 || !slices.Equal(slices.Sorted(slices.Values(all[2:])), slices.Sorted(slices.Values([]string{signup[0], verified[0], verified[0]}))) {
		t.Errorf("after retry and replay the receiver verified %v, rejected %v", all, rejected)
	}
	shoot("4b-retried-and-replayed.png")

	// Disable and enable it again.
	do("disabling the endpoint", chromedp.Click("#endpoints li.card button.toggle"))
	waitFor("the disabled endpoint", `document.querySelector("#endpoints li.card").textContent.includes("disabled: disabled through the management API")`)
	do("enabling the endpoint", chromedp.Click("#endpoints li.card button.toggle"))
	waitFor("the enabled endpoint", `document.querySelector("#endpoints li.card dd.ok") !== null`)

	// Readable at 360 px: nothing wider than the screen.
	do("narrowing the window", chromedp.EmulateViewport(360, 800))
	waitFor("the narrow layout", `document.documentElement.clientWidth === 360`)
	if w, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`)); err != nil || w > 360 {
		t.Errorf("at 360 px the page is %d px wide (%v)", w, err)
	}
	shoot("5-narrow-360px.png")
	do("widening the window", chromedp.EmulateViewport(1024, 900))

	// Every control is a real button, link or form field.
	if n, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("[onclick], div[tabindex], span[tabindex]").length`)); err != nil || n != 0 {
		t.Errorf("%d clickable non-controls (%v)", n, err)
	}
	if n, err := chromedp.Run(bctx, chromedp.Evaluate[int](`Array.from(document.querySelectorAll("input, select")).filter(i => !i.labels || !i.labels.length).length`)); err != nil || n != 0 {
		t.Errorf("%d form fields without a label (%v)", n, err)
	}

	// 5. Another tenant's link shows none of it.
	do("opening globex's link", chromedp.Navigate(globex.URL))
	waitFor("globex's portal", `document.body.dataset.ready === "true" && document.getElementById("session").textContent.includes("Tenant globex")`)
	if s := text(); !strings.Contains(s, "No endpoints yet.") || strings.Contains(s, rcv.srv.URL) || strings.Contains(s, "CRM sync") || strings.Contains(s, "acme") {
		t.Errorf("globex's portal shows acme's endpoint:\n%s", s)
	}
	shoot("6-other-tenant.png")

	// 6. An expired link is refused, and says so.
	expired := env.base + "/portal/#token=" + expiredPortalToken(t, env.redis.Addr, "acme")
	do("opening an expired link", chromedp.Navigate(expired))
	waitFor("the refusal", `document.getElementById("session").textContent.includes("This portal link has expired.")`)
	if s := text(); !strings.Contains(s, "token_expired") || strings.Contains(s, rcv.srv.URL) {
		t.Errorf("the expired link's page:\n%s", s)
	}
	// The refused token is dropped: reloading does not bring the portal back.
	do("reloading", chromedp.Navigate(env.base+"/portal/"))
	waitFor("the missing-link page", `document.getElementById("session").textContent.includes("This page needs a portal link.")`)
	do("opening the expired link again", chromedp.Navigate(expired))
	waitFor("the refusal", `document.getElementById("session").textContent.includes("This portal link has expired.")`)
	shoot("7-expired-link.png")

	consoleMu.Lock()
	defer consoleMu.Unlock()
	for _, m := range console {
		t.Errorf("console: %s", m)
	}
}
