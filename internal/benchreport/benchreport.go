// Package benchreport writes khib's benchmark results as a Markdown table, a
// CSV file and a PNG chart.
package benchreport

import (
	"encoding/csv"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Row is one measured configuration: a system (khib, swsusp, ...) at one
// size, with the medians of Runs runs. A zero figure was not measured; a
// non-empty Failed says why the system could not do it at all.
type Row struct {
	System     string
	UsedMiB    int // memory the workload held
	MemMiB     int // guest RAM
	SMP        int
	Accel      string
	Runs       int
	HibernateS float64 // command to power-off
	ResumeS    float64 // power-on to A's tasks running
	// VerifiedS is power-on to the workload checked whole: for swsusp it
	// includes paging back in what it swapped out to make room for its
	// image, which ResumeS leaves out. 0: not measured.
	VerifiedS float64
	ImageMiB  float64 // bytes written for the image
	Failed    string
}

// Ratio is one khib/other figure for the chart: below 1 means khib is
// better (less time, fewer bytes), unless the name says otherwise.
type Ratio struct {
	Name  string
	Value float64
	Goal  float64 // the target ratio, or 0
}

// Phase is one phase's median time, for the stacked table.
type Phase struct {
	Name    string
	Seconds float64
}

// Report is what a benchmark run produced.
type Report struct {
	Title     string
	Rows      []Row
	Ratios    []Ratio
	Phases    map[string][]Phase // by title, e.g. "khib hibernate, 1024 MiB used"
	Notes     []string
	Generated string // when, as text
}

// Write writes name.md, name.csv and name.png into dir.
func (r *Report) Write(dir, name string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("benchreport: %w", err)
	}
	var paths []string
	for _, out := range []struct {
		ext   string
		write func(io.Writer) error
	}{{"md", r.WriteMarkdown}, {"csv", r.WriteCSV}, {"png", r.WritePNG}} {
		p := filepath.Join(dir, name+"."+out.ext)
		f, err := os.Create(p)
		if err != nil {
			return paths, fmt.Errorf("benchreport: %w", err)
		}
		err = out.write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return paths, fmt.Errorf("benchreport: writing %s: %w", p, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func num(v float64) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// WriteMarkdown writes the tables for people.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", r.Title)
	if r.Generated != "" {
		fmt.Fprintf(&b, "%s\n\n", r.Generated)
	}
	b.WriteString("Medians of the runs given. Hibernate: command to power-off. Resume: power-on to A's tasks running. " +
		"Verified: power-on to the workload's memory checked whole, which for swsusp includes paging back in what it swapped out before its image.\n\n")
	b.WriteString("| system | used MiB | guest MiB | CPUs | accel | runs | hibernate s | resume s | verified s | image MiB | note |\n")
	b.WriteString("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|\n")
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %d | %s | %s | %s | %s | %s |\n", row.System, row.UsedMiB, row.MemMiB, row.SMP,
			row.Accel, row.Runs, num(row.HibernateS), num(row.ResumeS), num(row.VerifiedS), num(row.ImageMiB), row.Failed)
	}
	if len(r.Ratios) > 0 {
		b.WriteString("\n| ratio | value | goal |\n|---|---:|---:|\n")
		for _, q := range r.Ratios {
			fmt.Fprintf(&b, "| %s | %.2f | %s |\n", q.Name, q.Value, num(q.Goal))
		}
	}
	titles := make([]string, 0, len(r.Phases))
	for t := range r.Phases {
		titles = append(titles, t)
	}
	sort.Strings(titles)
	for _, t := range titles {
		ph := r.Phases[t]
		total := 0.0
		for _, p := range ph {
			total += p.Seconds
		}
		fmt.Fprintf(&b, "\n**%s** (%.2f s)\n\n| phase | s | share | |\n|---|---:|---:|---|\n", t, total)
		for _, p := range ph {
			share := 0.0
			if total > 0 {
				share = p.Seconds / total
			}
			fmt.Fprintf(&b, "| %s | %.2f | %.0f%% | %s |\n", p.Name, p.Seconds, 100*share, strings.Repeat("█", int(share*30+0.5)))
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteCSV writes one line per row.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"system", "used_mib", "mem_mib", "smp", "accel", "runs", "hibernate_s", "resume_s", "verified_s", "image_mib", "failed"})
	for _, row := range r.Rows {
		cw.Write([]string{row.System, strconv.Itoa(row.UsedMiB), strconv.Itoa(row.MemMiB), strconv.Itoa(row.SMP), row.Accel,
			strconv.Itoa(row.Runs), num(row.HibernateS), num(row.ResumeS), num(row.VerifiedS), num(row.ImageMiB), row.Failed})
	}
	for _, q := range r.Ratios {
		cw.Write([]string{"ratio: " + q.Name, "", "", "", "", "", "", "", "", strconv.FormatFloat(q.Value, 'f', 3, 64), ""})
	}
	cw.Flush()
	return cw.Error()
}

// The chart: ratios as bars on the left, time against used memory on the
// right.
const (
	chartW, chartH = 1100, 480
	panelTop       = 50
	panelBottom    = chartH - 60
)

var (
	white = color.RGBA{255, 255, 255, 255}
	black = color.RGBA{0, 0, 0, 255}
	grey  = color.RGBA{200, 200, 200, 255}
	// One colour per system, and a lighter one for its resume line.
	palette = []color.RGBA{{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255}, {148, 103, 189, 255}}
)

type canvas struct{ *image.RGBA }

func (c canvas) line(x0, y0, x1, y1 int, col color.Color, width int) {
	dx, dy := x1-x0, y1-y0
	n := max(abs(dx), abs(dy), 1)
	for i := 0; i <= n; i++ {
		x, y := x0+dx*i/n, y0+dy*i/n
		for a := -width / 2; a <= width/2; a++ {
			for b := -width / 2; b <= width/2; b++ {
				c.Set(x+a, y+b, col)
			}
		}
	}
}

func (c canvas) rect(x0, y0, x1, y1 int, col color.Color) {
	for y := min(y0, y1); y < max(y0, y1); y++ {
		for x := min(x0, x1); x < max(x0, x1); x++ {
			c.Set(x, y, col)
		}
	}
}

func (c canvas) text(x, y int, s string, col color.Color) {
	d := font.Drawer{Dst: c.RGBA, Src: image.NewUniform(col), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// WritePNG draws the chart.
func (r *Report) WritePNG(w io.Writer) error {
	c := canvas{image.NewRGBA(image.Rect(0, 0, chartW, chartH))}
	c.rect(0, 0, chartW, chartH, white)
	c.text(20, 24, r.Title, black)

	// Left: ratios, 0..max(1.2, largest), with a line at 1 and each goal.
	lx0, lx1 := 60, 500
	c.text(lx0, panelTop-8, "khib / other (below 1: khib better)", black)
	top := 1.2
	for _, q := range r.Ratios {
		top = math.Max(top, q.Value*1.1)
	}
	ly := func(v float64) int { return panelBottom - int(v/top*float64(panelBottom-panelTop)) }
	c.line(lx0, panelTop, lx0, panelBottom, black, 1)
	c.line(lx0, panelBottom, lx1, panelBottom, black, 1)
	for v := 0.0; v <= top; v += 0.25 {
		c.line(lx0-4, ly(v), lx1, ly(v), grey, 1)
		c.text(lx0-40, ly(v)+4, strconv.FormatFloat(v, 'f', 2, 64), black)
	}
	c.line(lx0, ly(1), lx1, ly(1), black, 1)
	if n := len(r.Ratios); n > 0 {
		slot := (lx1 - lx0) / n
		for i, q := range r.Ratios {
			x := lx0 + i*slot + slot/5
			c.rect(x, ly(q.Value), x+slot*3/5, panelBottom, palette[0])
			c.text(x, ly(q.Value)-4, strconv.FormatFloat(q.Value, 'f', 2, 64), black)
			if q.Goal > 0 {
				c.line(x-4, ly(q.Goal), x+slot*3/5+4, ly(q.Goal), palette[1], 2)
			}
			for j, word := range wrap(q.Name, max(slot/7, 6)) {
				c.text(x-slot/6, panelBottom+14+13*j, word, black)
			}
		}
		c.text(lx1-150, panelTop+6, "red: goal", palette[1])
	}

	// Right: seconds against used MiB, a line per system and measure.
	rx0, rx1 := 590, chartW-30
	c.text(rx0, panelTop-8, "seconds against memory in use (MiB)", black)
	maxX, maxY := 1.0, 1.0
	for _, row := range r.Rows {
		maxX = math.Max(maxX, float64(row.UsedMiB))
		maxY = math.Max(maxY, math.Max(row.HibernateS, row.ResumeS))
	}
	maxY *= 1.1
	px := func(v float64) int { return rx0 + int(v/maxX*float64(rx1-rx0)) }
	py := func(v float64) int { return panelBottom - int(v/maxY*float64(panelBottom-panelTop)) }
	c.line(rx0, panelTop, rx0, panelBottom, black, 1)
	c.line(rx0, panelBottom, rx1, panelBottom, black, 1)
	step := niceStep(maxY)
	for v := 0.0; v <= maxY; v += step {
		c.line(rx0-4, py(v), rx1, py(v), grey, 1)
		c.text(rx0-34, py(v)+4, strconv.FormatFloat(v, 'f', 0, 64), black)
	}
	xs := map[int]bool{}
	for _, row := range r.Rows {
		if !xs[row.UsedMiB] {
			xs[row.UsedMiB] = true
			c.line(px(float64(row.UsedMiB)), panelBottom, px(float64(row.UsedMiB)), panelBottom+4, black, 1)
			c.text(px(float64(row.UsedMiB))-12, panelBottom+16, strconv.Itoa(row.UsedMiB), black)
		}
	}
	systems := []string{}
	seen := map[string]bool{}
	for _, row := range r.Rows {
		if !seen[row.System] {
			seen[row.System] = true
			systems = append(systems, row.System)
		}
	}
	legendY := panelTop + 6
	for si, sys := range systems {
		col := palette[si%len(palette)]
		light := color.RGBA{col.R/2 + 127, col.G/2 + 127, col.B/2 + 127, 255}
		for mi, measure := range []struct {
			name string
			get  func(Row) float64
			col  color.RGBA
		}{{"hibernate", func(r Row) float64 { return r.HibernateS }, col}, {"resume", func(r Row) float64 { return r.ResumeS }, light}} {
			var pts []Row
			for _, row := range r.Rows {
				if row.System == sys && row.Failed == "" && measure.get(row) > 0 {
					pts = append(pts, row)
				}
			}
			sort.Slice(pts, func(i, j int) bool { return pts[i].UsedMiB < pts[j].UsedMiB })
			for i, p := range pts {
				x, y := px(float64(p.UsedMiB)), py(measure.get(p))
				c.rect(x-3, y-3, x+4, y+4, measure.col)
				if i > 0 {
					q := pts[i-1]
					c.line(px(float64(q.UsedMiB)), py(measure.get(q)), x, y, measure.col, 2)
				}
			}
			c.rect(rx0+10, legendY+13*(2*si+mi)-8, rx0+22, legendY+13*(2*si+mi), measure.col)
			c.text(rx0+28, legendY+13*(2*si+mi), sys+" "+measure.name, black)
		}
	}
	for _, row := range r.Rows {
		if row.Failed != "" {
			c.text(px(float64(row.UsedMiB))-100, panelTop+13*(2*len(systems)+1), row.System+" failed", palette[1])
		}
	}
	return png.Encode(w, c.RGBA)
}

func niceStep(top float64) float64 {
	for _, s := range []float64{1, 2, 5, 10, 20, 50, 100, 200} {
		if top/s <= 8 {
			return s
		}
	}
	return 500
}

// wrap splits s into lines of at most n characters at spaces.
func wrap(s string, n int) []string {
	var out []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > n {
			out = append(out, line)
			line = w
			continue
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		out = append(out, line)
	}
	return out
}
