package rules

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a rule file, with its position.
type Error struct {
	// File is the file name as given to Parse or Load.
	File string
	// Line and Column are 1-based; zero when the problem has no single place (e.g. a missing file).
	Line, Column int
	// Field is the dotted path of the offending value inside its rule or test, e.g. "match.status".
	Field string
	// Msg says what was expected and what was found.
	Msg string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found while loading rules, in file and line order.
// Its Error method prints one problem per line.
type ErrorList []*Error

func (l ErrorList) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

func (l ErrorList) sort() {
	sort.SliceStable(l, func(i, j int) bool {
		if l[i].File != l[j].File {
			return l[i].File < l[j].File
		}
		if l[i].Line != l[j].Line {
			return l[i].Line < l[j].Line
		}
		return l[i].Column < l[j].Column
	})
}

// err returns nil for an empty list, so callers can return it directly.
func (l ErrorList) err() error {
	if len(l) == 0 {
		return nil
	}
	l.sort()
	return l
}
