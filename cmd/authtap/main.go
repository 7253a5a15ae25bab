// Command authtap is the standalone authtap tool: workers, rule checks,
// endpoint management and the demo. Run "authtap help" for the commands.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one subcommand. Each lives in its own file and registers itself in init().
type command struct {
	// usage is the one-line synopsis, e.g. "rules check FILE...".
	usage string
	// summary is one sentence for "authtap help".
	summary string
	// run executes the command with the arguments after its name and returns the exit code.
	run func(args []string, stdout, stderr io.Writer) int
}

var commands = map[string]command{}

func register(name string, c command) { commands[name] = c }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "authtap: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "authtap — webhooks for auth services that have none.")
	fmt.Fprintln(w, "\nUsage:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	width := 0
	for _, n := range names {
		width = max(width, len(commands[n].usage))
	}
	for _, n := range names {
		c := commands[n]
		fmt.Fprintf(w, "  authtap %-*s  %s\n", width, c.usage, c.summary)
	}
	fmt.Fprintln(w, "\nRun \"authtap COMMAND -h\" for a command's flags.")
}

// splitSub splits "rules check a b" style arguments into the sub-verb and the rest.
func splitSub(args []string) (string, []string) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", args
	}
	return args[0], args[1:]
}
