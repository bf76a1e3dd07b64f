package vm

import (
	"math"
	"strconv"
	"strings"
)

// FigurePrefix starts the console lines by which guest scripts report
// figures to the runner: "KHIBVM:key=value key2=value2". A bare word
// ("KHIBVM:booted") records the key with the value true.
const FigurePrefix = "KHIBVM:"

// Figures collects the key=value pairs of every KHIBVM: line. Numbers
// become int64 or float64, "true"/"false" booleans, anything else stays a
// string; a later report of a key replaces an earlier one. Values cannot
// contain spaces. The prefix may sit anywhere in the line, since kernel
// messages can interleave with the guest's output.
func Figures(lines []Line) map[string]any {
	out := map[string]any{}
	for _, l := range lines {
		if l.QEMU {
			continue
		}
		_, rest, ok := strings.Cut(l.Text, FigurePrefix)
		if !ok {
			continue
		}
		for _, tok := range strings.Fields(rest) {
			k, v, hasValue := strings.Cut(tok, "=")
			if k == "" {
				continue
			}
			if !hasValue {
				out[k] = true
				continue
			}
			out[k] = ParseFigure(v)
		}
	}
	return out
}

// ParseFigure converts a reported value to int64, float64 or bool when it
// reads as one, and leaves it a string otherwise.
func ParseFigure(v string) any {
	if i, err := strconv.ParseInt(v, 10, 64); err == nil {
		return i
	}
	// NaN and infinities stay strings: JSON cannot carry them.
	if f, err := strconv.ParseFloat(v, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) &&
		!strings.ContainsAny(v, "xX_") {
		return f
	}
	if b, err := strconv.ParseBool(v); err == nil && (v == "true" || v == "false") {
		return b
	}
	return v
}
