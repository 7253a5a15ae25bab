package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// nodeReceiverJS is the Node.js receiver (-receiver node): http.createServer
// with Node's defaults (keepAliveTimeout 5 s), no npm packages. It verifies
// the Standard Webhooks signature (HMAC-SHA256 of "id.timestamp.body" with
// the base64 key after "whsec_", timestamp within 5 minutes) and writes one
// line per delivery on stdout: "OK <json {id, body}>", "BADSIG" or "BADBODY".
const nodeReceiverJS = `'use strict';
const http = require('http');
const crypto = require('crypto');
const key = Buffer.from(process.env.SECRET.replace(/^whsec_/, ''), 'base64');
const MAX = Number(process.env.MAX_BODY);
const out = (s) => process.stdout.write(s + '\n');
http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => { size += c.length; if (size <= MAX) chunks.push(c); });
  req.on('end', () => {
    if (size > MAX) { out('BADBODY'); res.writeHead(400).end(); return; }
    const body = Buffer.concat(chunks);
    const id = String(req.headers['webhook-id'] || '');
    const ts = String(req.headers['webhook-timestamp'] || '');
    const want = crypto.createHmac('sha256', key).update(id + '.' + ts + '.').update(body).digest();
    const fresh = /^[0-9]{1,12}$/.test(ts) && Math.abs(Date.now() / 1000 - Number(ts)) <= 300;
    const ok = fresh && String(req.headers['webhook-signature'] || '').split(' ').some((s) => {
      const [v, b] = s.split(',');
      if (v !== 'v1' || !b) return false;
      const got = Buffer.from(b, 'base64');
      return got.length === want.length && crypto.timingSafeEqual(got, want);
    });
    if (!ok) { out('BADSIG'); res.writeHead(401).end(); return; }
    out('OK ' + JSON.stringify({ id, body: body.toString('utf8') }));
    res.writeHead(204).end();
  });
}).listen(Number(process.env.PORT), '127.0.0.1', () => out('LISTENING'));
`

// nodeStartTimeout bounds the wait for the Node receiver to listen.
const nodeStartTimeout = 15 * time.Second

// maxNodeLine bounds one stdout line of the Node receiver: a delivery body
// (at most maxDeliveryBody) JSON-escaped, so up to six bytes per byte.
const maxNodeLine = 6*maxDeliveryBody + 1024

// nodeReceiver runs nodeReceiverJS as a child process; down kills it, up
// starts a new one on the same port.
type nodeReceiver struct {
	addr, script, secret, logDir string
	led                          *ledger

	mu sync.Mutex
	p  *proc
	n  int
}

func newNodeReceiver(ctx context.Context, dir, secret string, led *ledger) (*nodeReceiver, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &nodeReceiver{addr: fmt.Sprintf("127.0.0.1:%d", port), script: filepath.Join(dir, "receiver.js"), secret: secret, logDir: dir, led: led}
	if err := os.WriteFile(r.script, []byte(nodeReceiverJS), 0o600); err != nil {
		return nil, err
	}
	if err := r.up(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *nodeReceiver) url() string { return "http://" + r.addr + "/hook" }

func (r *nodeReceiver) up(ctx context.Context) error {
	deadline := time.Now().Add(nodeStartTimeout)
	for {
		err := r.start()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func (r *nodeReceiver) start() error {
	r.mu.Lock()
	r.n++
	n := r.n
	r.mu.Unlock()
	cmd := exec.Command("node", r.script)
	cmd.Env = append(os.Environ(), "SECRET="+r.secret, "PORT="+r.addr[strings.LastIndexByte(r.addr, ':')+1:],
		fmt.Sprintf("MAX_BODY=%d", maxDeliveryBody))
	// an os.Pipe, not StdoutPipe: Wait would close StdoutPipe at the exit and
	// drop the last lines of a killed receiver, deliveries it answered 204
	stdout, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout = w
	logFile := filepath.Join(r.logDir, fmt.Sprintf("receiver-%d.log", n))
	p, err := startProc("node receiver", logFile, cmd)
	w.Close()
	if err != nil {
		stdout.Close()
		return err
	}
	listening := make(chan struct{})
	go func() {
		defer stdout.Close()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), maxNodeLine)
		once := sync.OnceFunc(func() { close(listening) })
		for sc.Scan() {
			r.line(sc.Text(), once)
		}
	}()
	select {
	case <-listening:
		r.mu.Lock()
		r.p = p
		r.mu.Unlock()
		return nil
	case <-p.exited:
		log, _ := os.ReadFile(logFile)
		return fmt.Errorf("node receiver exited before listening on %s: %s", r.addr, tail(log, 1000))
	case <-time.After(nodeStartTimeout):
		p.kill()
		return fmt.Errorf("node receiver did not listen on %s within %s", r.addr, nodeStartTimeout)
	}
}

// line records one line of the receiver's output.
func (r *nodeReceiver) line(s string, listening func()) {
	switch {
	case s == "LISTENING":
		listening()
	case s == "BADSIG":
		r.led.count(&r.led.badSig)
	case strings.HasPrefix(s, "OK "):
		var d struct{ ID, Body string }
		if err := json.Unmarshal([]byte(s[3:]), &d); err != nil {
			r.led.count(&r.led.badBody)
			return
		}
		user, evID, err := deliveredUser([]byte(d.Body))
		if err != nil {
			r.led.count(&r.led.badBody)
			return
		}
		if d.ID != evID {
			r.led.count(&r.led.mismatch)
		}
		r.led.deliver(user, d.ID, time.Now())
	default: // BADBODY, or anything else a broken receiver prints
		r.led.count(&r.led.badBody)
	}
}

// down kills the receiver (its connections are reset by the kernel).
func (r *nodeReceiver) down() {
	r.mu.Lock()
	p := r.p
	r.p = nil
	r.mu.Unlock()
	if p != nil {
		p.kill()
	}
}
