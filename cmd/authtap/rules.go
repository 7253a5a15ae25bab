package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/authtap/authtap/rules"
)

func init() {
	register("rules", command{
		usage:   "rules check|test|suggest FILE...",
		summary: "validate rule files and run their inline tests, show the events of one exchange, or draft rules for what no rule covers",
		run:     runRules,
	})
}

func runRules(args []string, stdout, stderr io.Writer) int {
	sub, rest := splitSub(args)
	switch sub {
	case "check":
		return rulesCheck(rest, stdout, stderr)
	case "test":
		return rulesTest(rest, stdout, stderr)
	case "suggest":
		return rulesSuggest(rest, stdout, stderr)
	default:
		fmt.Fprintln(stderr, `usage:
  authtap rules check FILE...
      Validate rule files (YAML or JSON; globs allowed) and run their inline tests.
      Prints one line per test; exits 1 on any invalid file or failing test.
  authtap rules test FILE... --request R [--response S] [--source NAME] [--mode live|test]
      Print the events one exchange would produce. R and S are files (or - for stdin)
      holding JSON/YAML like a test's request/response, or raw HTTP messages.
  authtap rules suggest [--api URL --token T | --redis URL | --input FILE] [-o FILE]
      Draft a rule file (with inline tests from the redacted samples) for the
      successful mutations no rule matched (GET /unmatched). Run with -h for details.`)
		if sub == "" || sub == "help" {
			return 0
		}
		return 2
	}
}

func rulesCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rules check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quiet := fs.Bool("q", false, "print failures and the summary only")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "authtap rules check: want one or more rule files")
		return 2
	}
	set, err := rules.Load(fs.Args()...)
	if err != nil {
		fmt.Fprintln(stderr, err)
		fmt.Fprintln(stderr, "rules are invalid")
		return 1
	}
	results := set.RunTests()
	passed, failed := 0, 0
	for _, r := range results {
		if r.Passed {
			passed++
			if !*quiet {
				fmt.Fprintf(stdout, "ok    %s:%d: %s\n", r.File, r.Line, r.Name)
			}
			continue
		}
		failed++
		fmt.Fprintf(stdout, "FAIL  %s:%d: %s: %s\n", r.File, r.Line, r.Name, r.Failure)
	}
	fmt.Fprintf(stdout, "%d rules in %d files; tests: %d passed, %d failed\n", len(set.Rules()), len(set.Files()), passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

func rulesTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rules test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	reqArg := fs.String("request", "", "the request: a file with JSON/YAML ({method, path, header, cookie, body}) or a raw HTTP request; - for stdin")
	respArg := fs.String("response", "", "the response: a file with JSON/YAML ({status, header, body}) or a raw HTTP response; default status 200 with no body")
	source := fs.String("source", "authtap", "source name put in the events")
	mode := fs.String("mode", rules.ModeLive, "live or test")
	files, flags := splitFilesAndFlags(args)
	if err := fs.Parse(flags); err != nil {
		return 2
	}
	files = append(files, fs.Args()...)
	if len(files) == 0 || *reqArg == "" {
		fmt.Fprintln(stderr, "authtap rules test: want rule files and --request")
		return 2
	}
	if *mode != rules.ModeLive && *mode != rules.ModeTest {
		fmt.Fprintf(stderr, "authtap rules test: --mode: want live or test, got %q\n", *mode)
		return 2
	}
	set, err := rules.Load(files...)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	reqData, err := readArg(*reqArg)
	if err != nil {
		fmt.Fprintf(stderr, "authtap rules test: reading --request: %v\n", err)
		return 2
	}
	ex, err := rules.ParseRequest(*reqArg, reqData)
	if err != nil {
		fmt.Fprintf(stderr, "authtap rules test: --request: %v\n", err)
		return 2
	}
	if *respArg != "" {
		respData, err := readArg(*respArg)
		if err != nil {
			fmt.Fprintf(stderr, "authtap rules test: reading --response: %v\n", err)
			return 2
		}
		if err := rules.ParseResponse(*respArg, respData, ex); err != nil {
			fmt.Fprintf(stderr, "authtap rules test: --response: %v\n", err)
			return 2
		}
	}
	matches := set.Match(ex)
	noteLookups := func(m *rules.Match, ex *rules.Exchange) {
		for i := 0; i < m.NumLookups(); i++ {
			lk := m.Lookup(i, ex)
			when := "after the response"
			if lk.Before {
				when = "before forwarding the request"
			}
			fmt.Fprintf(stderr, "note: rule %q would GET %s on the upstream %s (as %q); it is not sent here, so its placeholders are missing\n", m.Rule.Name, lk.Path, when, lk.As)
		}
	}
	for _, m := range matches {
		noteLookups(m, ex)
		if !m.IsBatch() {
			continue
		}
		b, _ := m.Batch(ex)
		fmt.Fprintf(stderr, "note: batch rule %q: %d sub-request(s), %d succeeded, %d failed or unanswered", m.Rule.Name, b.Requests, len(b.Subs), b.Failed)
		if b.RolledBack {
			fmt.Fprint(stderr, "; atomic, so none was applied")
		}
		fmt.Fprintln(stderr)
		for _, sub := range b.Subs {
			for _, sm := range set.Match(sub) {
				fmt.Fprintf(stderr, "note:   %s %s (%d) matches rule %q\n", sub.Method, sub.Path, sub.Status, sm.Rule.Name)
				noteLookups(sm, sub)
			}
		}
	}
	events, errs := set.Evaluate(ex, rules.EmitOptions{Source: *source, Mode: *mode, Now: time.Now(), Unchanged: func(rule, typ string) {
		fmt.Fprintf(stderr, "note: rule %q: nothing changed, so no %s event (previous.skip_unchanged)\n", rule, typ)
	}})
	for _, e := range errs {
		fmt.Fprintf(stderr, "error: %v\n", e)
	}
	if events == nil {
		events = []rules.Event{}
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(events); err != nil {
		fmt.Fprintf(stderr, "authtap rules test: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "%d rule(s) matched, %d event(s)\n", len(matches), len(events))
	return 0
}

// splitFilesAndFlags lets files come before flags ("rules test a.yaml --request r.json").
func splitFilesAndFlags(args []string) (files, flags []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") && a != "-" {
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		files = append(files, a)
	}
	return files, flags
}

// maxExchangeFile bounds a --request or --response file (or stdin): room
// for a raw HTTP message with a body well past the handler's default
// max_body, but not for one that fills memory.
const maxExchangeFile = 8 << 20

func readArg(arg string) ([]byte, error) {
	var r io.Reader = os.Stdin
	if arg != "-" {
		st, err := os.Stat(arg)
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: not a regular file", arg)
		}
		if st.Size() > maxExchangeFile {
			return nil, fmt.Errorf("%s: the file is %d bytes; at most %d MiB", arg, st.Size(), maxExchangeFile>>20)
		}
		f, err := os.Open(arg)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxExchangeFile+1))
	if err == nil && len(b) > maxExchangeFile {
		err = fmt.Errorf("%s: more than %d MiB", arg, maxExchangeFile>>20)
	}
	return b, err
}
