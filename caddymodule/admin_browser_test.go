package caddymodule

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/tasks"
)

// chromiumPath is Debian's Chromium, which ./test.sh installs.
const chromiumPath = "/usr/bin/chromium"

// TestAdminMonitorInBrowser opens asynqmon through Caddy in headless Chromium,
// as an operator would: below /_authtap with basic auth. It checks that the
// single-page app finds its scripts and API below the external prefix, shows
// authtap's queues, and shows a webhook:deliver payload as readable JSON.
func TestAdminMonitorInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test: runs Chromium, Caddy and Redis")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("headless Chromium is needed at %s (%v): run ./test.sh, which installs it (apt-get install chromium)", chromiumPath, err)
	}
	env := startAdminCaddy(t, adminCaddyOptions{})
	taskID := env.enqueueParkedDelivery("evt_browser_1", "ep_browser_1")
	env.enqueueParkedFanout("evt_browser_2")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bctx := startChromium(t, ctx)

	// Every request of the page carries the admin's credentials; the page
	// loads fonts from Google, which the test blocks (no network needed).
	creds := base64.StdEncoding.EncodeToString([]byte(env.user + ":" + env.pass))
	if _, err := chromedp.Call(bctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("starting chromium (%s): %v", chromiumPath, err)
	}
	if _, err := chromedp.Call(bctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
		Headers: network.Headers{"Authorization": "Basic " + creds},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(bctx, network.SetBlockedURLs, network.SetBlockedURLsParams{
		URLPatterns: []*network.BlockPattern{
			{URLPattern: "https://fonts.googleapis.com/*", Block: true},
			{URLPattern: "https://fonts.gstatic.com/*", Block: true},
		},
	}); err != nil {
		t.Fatal(err)
	}

	monitor := env.base + "/_authtap/monitor"
	t.Run("dashboard lists authtap's queues", func(t *testing.T) {
		openAndWaitForText(t, bctx, monitor+"/", tasks.QueueFanout, tasks.QueueDeliver)
	})
	t.Run("scheduled deliveries show readable payloads", func(t *testing.T) {
		text := openAndWaitForText(t, bctx, monitor+"/queues/"+tasks.QueueDeliver+"?status=scheduled",
			`"event_id": "evt_browser_1"`)
		if !strings.Contains(text, `"endpoint_id": "ep_browser_1"`) {
			t.Errorf("scheduled tasks view lacks the endpoint id:\n%s", text)
		}
	})
	t.Run("task details show the JSON payload", func(t *testing.T) {
		text := openAndWaitForText(t, bctx, monitor+"/queues/"+tasks.QueueDeliver+"/tasks/"+url.PathEscape(taskID),
			tasks.TypeDeliver, `"event_id": "evt_browser_1"`, `"endpoint_id": "ep_browser_1"`, `"event_type": "user.created"`)
		if strings.Contains(text, "non-printable") {
			t.Errorf("payload shown as non-printable:\n%s", text)
		}
	})
}

// startChromium starts headless Chromium for the test and returns its
// context; it stops with ctx or the test. When the test fails, Chromium's
// output is logged.
func startChromium(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("headless Chromium is needed at %s (%v): run ./test.sh, which installs it (apt-get install chromium)", chromiumPath, err)
	}
	var browserLog lockedBuffer
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.CombinedOutput(&browserLog),
	)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
		if t.Failed() {
			t.Logf("chromium output:\n%s", browserLog.String())
		}
	})
	return bctx
}

// openAndWaitForText navigates to pageURL and polls the page's text until it
// holds every one of want, then returns the text. It fails the test at the
// deadline with what the page showed.
func openAndWaitForText(t *testing.T, ctx context.Context, pageURL string, want ...string) string {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("opening %s: %v", pageURL, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var text string
	for {
		var err error
		text, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		if err != nil {
			t.Fatalf("reading %s: %v", pageURL, err)
		}
		missing := ""
		for _, w := range want {
			if !strings.Contains(text, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return text
		}
		if time.Now().After(deadline) {
			loc, _ := chromedp.Run(ctx, chromedp.Location())
			t.Fatalf("%s (now at %s) never showed %q; it shows:\n%s", pageURL, loc, missing, text)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// enqueueParkedFanout puts an event:fanout task in Redis that waits an hour.
func (e *adminEnv) enqueueParkedFanout(eventID string) {
	e.t.Helper()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: e.redis.Addr})
	defer client.Close()
	task, err := tasks.NewFanoutTask(rules.Event{
		ID: eventID, Type: "user.created", Timestamp: time.Now().UTC(), Subject: "u_1",
		Data: json.RawMessage(`{"id":"u_1"}`), Source: rules.Source{Name: "admin-test", Rule: "user-created"}, Mode: "live",
	}, asynq.ProcessIn(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := client.Enqueue(task); err != nil {
		e.t.Fatalf("enqueuing a fan-out: %v", err)
	}
}

// lockedBuffer keeps Chromium's output for the failure log.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
