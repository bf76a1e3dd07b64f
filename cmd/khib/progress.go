package main

import "time"

// progress prints percent done, MB/s and ETA on the console, at most once
// a second: long work in a helper must show it is alive.
type progress struct {
	who, what   string // "khib-helper", "saving"
	total, n    uint64 // bytes, or items when items is set
	items       string // unit of a count ("chunks"); "" for bytes
	start, last time.Time
}

func newProgress(who, what string, total uint64) *progress {
	now := time.Now()
	return &progress{who: who, what: what, total: total, start: now, last: now}
}

func (p *progress) add(n uint64) {
	p.n += n
	if time.Since(p.last) < time.Second {
		return
	}
	p.last = time.Now()
	p.print()
}

// set records absolute progress.
func (p *progress) set(n uint64) { p.add(n - p.n) }

func (p *progress) print() {
	el := max(time.Since(p.start).Seconds(), 1e-3)
	pct := 100 * float64(p.n) / float64(max(p.total, 1))
	eta := 0.0
	if p.n > 0 {
		eta = el * float64(p.total-p.n) / float64(p.n)
	}
	if p.items != "" {
		console("%s: %s %3.0f%%  %d/%d %s  ETA %.0f s", p.who, p.what, pct, p.n, p.total, p.items, eta)
		return
	}
	console("%s: %s %3.0f%%  %d/%d MiB  %.0f MB/s  ETA %.0f s", p.who, p.what, pct, p.n>>20, p.total>>20, float64(p.n)/1e6/el, eta)
}
