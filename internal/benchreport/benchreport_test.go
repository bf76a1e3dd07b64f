package benchreport

import (
	"bytes"
	"encoding/csv"
	"image/png"
	"strings"
	"testing"
)

func sample() *Report {
	return &Report{
		Title: "khib against swsusp",
		Rows: []Row{
			{System: "khib", UsedMiB: 256, MemMiB: 4096, SMP: 1, Accel: "tcg", Runs: 3, HibernateS: 4.2, ResumeS: 7.5, VerifiedS: 8.25, ImageMiB: 120},
			{System: "swsusp", UsedMiB: 256, MemMiB: 4096, SMP: 1, Accel: "tcg", Runs: 3, HibernateS: 6.1, ResumeS: 9.9, ImageMiB: 150},
			{System: "khib", UsedMiB: 3600, MemMiB: 4096, SMP: 1, Accel: "tcg", Runs: 3, HibernateS: 40, ResumeS: 50, ImageMiB: 1800},
			{System: "swsusp", UsedMiB: 3600, MemMiB: 4096, SMP: 1, Accel: "tcg", Runs: 1, Failed: "Error -12 creating image"},
		},
		Ratios: []Ratio{{Name: "hibernate vs swsusp", Value: 0.69, Goal: 0.5}, {Name: "resume vs swsusp", Value: 0.76, Goal: 0.6}},
		Phases: map[string][]Phase{"khib hibernate, 256 MiB": {{"A prepares", 0.5}, {"B saves", 2.4}}},
	}
}

func TestWriters(t *testing.T) {
	r := sample()
	for _, tc := range []struct {
		name  string
		write func(*bytes.Buffer) error
		check func(t *testing.T, b []byte)
	}{
		{"markdown", func(b *bytes.Buffer) error { return r.WriteMarkdown(b) }, func(t *testing.T, b []byte) {
			s := string(b)
			for _, want := range []string{"| khib | 256 | 4096 | 1 | tcg | 3 | 4.20 | 7.50 | 8.25 | 120.00 |", "Error -12 creating image", "| hibernate vs swsusp | 0.69 | 0.50 |", "B saves"} {
				if !strings.Contains(s, want) {
					t.Errorf("markdown lacks %q:\n%s", want, s)
				}
			}
		}},
		{"csv", func(b *bytes.Buffer) error { return r.WriteCSV(b) }, func(t *testing.T, b []byte) {
			recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1+len(r.Rows)+len(r.Ratios) || recs[1][0] != "khib" || recs[1][6] != "4.20" || recs[1][8] != "8.25" {
				t.Errorf("csv = %q", recs)
			}
		}},
		{"png", func(b *bytes.Buffer) error { return r.WritePNG(b) }, func(t *testing.T, b []byte) {
			img, err := png.Decode(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if img.Bounds().Dx() != chartW || img.Bounds().Dy() != chartH {
				t.Errorf("chart is %v", img.Bounds())
			}
			// Something was drawn in both panels, not a blank page.
			colours := map[uint32]bool{}
			for y := panelTop; y < panelBottom; y += 3 {
				for x := 0; x < chartW; x += 3 {
					r, g, b, _ := img.At(x, y).RGBA()
					colours[r<<16^g<<8^b] = true
				}
			}
			if len(colours) < 4 {
				t.Errorf("chart has %d colours", len(colours))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.write(&b); err != nil {
				t.Fatal(err)
			}
			tc.check(t, b.Bytes())
		})
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	paths, err := sample().Write(dir, "bench")
	if err != nil || len(paths) != 3 {
		t.Fatalf("Write = %v, %v", paths, err)
	}
}

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"hibernate vs swsusp", 10, "hibernate|vs swsusp"},
		{"a b c", 3, "a b|c"},
		{"", 5, ""},
	} {
		if got := strings.Join(wrap(tc.in, tc.n), "|"); got != tc.want {
			t.Errorf("wrap(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
