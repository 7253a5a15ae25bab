package benchenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// LoadAvg returns the 1, 5 and 15 minute load averages, or "unknown".
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// PrintBuild prints the commit being measured and the redis-server version,
// each on its own line, leaving out what cannot be found.
func PrintBuild() {
	if v, err := exec.Command("git", "log", "-1", "--format=%h %s").Output(); err == nil {
		fmt.Printf("commit:    %s", v)
	}
	if v, err := exec.Command("redis-server", "--version").Output(); err == nil {
		fmt.Printf("redis:     %s", v)
	}
}
