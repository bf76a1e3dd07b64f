package corrupt

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/khib/khib/internal/image"
)

// Check runs the mutated image through image.Check, everything stage 1
// of a resume checks of an image's bytes before it writes a page. nil
// means the mutation got through.
func Check(m *Mutation) error {
	rd, err := image.Check(m.ReaderAt(), m.Size, image.CheckOptions{Key: m.key})
	if err != nil {
		return err
	}
	rd.Close()
	return nil
}

// Probe is what image.Restore alone, without Verify first, did with a
// mutated image: what the restore helper would write if stage 1 had not
// checked the whole image before handing over.
type Probe struct {
	Opened bool   // image.Open accepted the mutated image, so Restore ran
	Pages  uint64 // pages Restore handed out before it stopped
	Data   uint64 // of them, pages of chunks (not zero runs)
	// Wrong counts the pages handed out that differ from the original
	// image's page at the same place (or that it does not hold).
	Wrong uint64
	Err   error // Restore's error; nil with Opened: every page was handed out
}

// ProbeRestore opens the mutated image and restores it into nothing,
// counting the pages handed out and comparing each with the original's.
func ProbeRestore(m *Mutation) Probe {
	rd, err := image.OpenWith(m.ReaderAt(), m.Size, image.OpenOptions{Key: m.key})
	if err != nil {
		return Probe{Err: err}
	}
	defer rd.Close()
	orig, err := image.OpenWith(m.base, m.baseSize, image.OpenOptions{Key: m.key})
	if err != nil {
		return Probe{Err: fmt.Errorf("corrupt: the original image: %w", err)}
	}
	defer orig.Close()
	p := Probe{Opened: true}
	p.Err = rd.Restore(func(pfn uint64, pages []byte, zero bool) error {
		n := uint64(len(pages) / image.PageSize)
		p.Pages += n
		if !zero {
			p.Data += n
		}
		for i := range n {
			want, err := orig.ReadPage(pfn + i)
			if err != nil || !bytes.Equal(want, pages[i*image.PageSize:(i+1)*image.PageSize]) {
				p.Wrong++
			}
		}
		return nil
	})
	return p
}

// Options say how many mutations Run makes and how many it probes.
type Options struct {
	N int // mutations
	// ProbeEvery: also run ProbeRestore on every ProbeEvery-th mutation;
	// 0 never does.
	ProbeEvery int
	// Logf, if set, gets a line for every mutation that got through.
	Logf func(format string, args ...any)
}

// Report is what a run found. Accepted must be empty.
type Report struct {
	Seed      uint64       `json:"seed"`
	Mutations int          `json:"mutations"`
	Tried     map[Kind]int `json:"tried"`
	Refused   map[Kind]int `json:"refused"`
	// ByRegion counts the mutations by the part of the image where they
	// start, FlipsByRegion the byte flips alone.
	ByRegion      map[string]int `json:"by_region"`
	FlipsByRegion map[string]int `json:"flips_by_region"`
	// Accepted lists every mutation the check let through, as
	// "#seq kind: what".
	Accepted []string `json:"accepted"`
	// Errors counts refusals by the sentinel they wrap: not-image,
	// version, incomplete, invalidated, corrupt, wrong-key, encrypted, other.
	Errors map[string]int `json:"errors"`
	// Restore probes: how many mutations were also restored without a
	// Verify first, how many of them opened, how many had pages handed
	// out before Restore failed, and which Restore took in full though
	// the check refused them; the pages handed out in all, and how many
	// of them differed from the original image's.
	Probed         int      `json:"probed"`
	ProbeOpened    int      `json:"probe_opened"`
	ProbeLeaked    int      `json:"probe_pages_before_error"`
	ProbeCompleted []string `json:"probe_restore_completed"`
	ProbePages     uint64   `json:"probe_pages_handed_out"`
	ProbeWrong     uint64   `json:"probe_wrong_pages"`
	Seconds        float64  `json:"seconds"`
	SlowestSeconds float64  `json:"slowest_check_s"`
	Slowest        string   `json:"slowest_check"`
}

// Run makes opts.N mutations with g and checks each. An error means the
// run could not go on (a read of the original image failed); mutations
// that get through are in the report, not an error.
func Run(g *Generator, opts Options) (*Report, error) {
	t0 := time.Now()
	rep := &Report{Seed: g.Seed(), Tried: map[Kind]int{}, Refused: map[Kind]int{}, Errors: map[string]int{}, Accepted: []string{},
		ByRegion: map[string]int{}, FlipsByRegion: map[string]int{}, ProbeCompleted: []string{}}
	for i := 1; i <= opts.N; i++ {
		m, err := g.Next()
		if err != nil {
			return rep, fmt.Errorf("mutation %d of seed %d: %w", i, g.Seed(), err)
		}
		rep.Mutations++
		rep.Tried[m.Kind]++
		rep.ByRegion[m.Region]++
		if m.Kind == Flip {
			rep.FlipsByRegion[m.Region]++
		}
		t := time.Now()
		err = Check(m)
		if d := time.Since(t).Seconds(); d > rep.SlowestSeconds {
			rep.SlowestSeconds, rep.Slowest = d, m.String()
		}
		if err == nil {
			s := fmt.Sprintf("#%d %v", m.Seq, m)
			rep.Accepted = append(rep.Accepted, s)
			if opts.Logf != nil {
				opts.Logf("corrupt: seed %d: mutation got through the check: %s", g.Seed(), s)
			}
		} else {
			rep.Refused[m.Kind]++
			rep.Errors[class(err)]++
		}
		if opts.ProbeEvery > 0 && i%opts.ProbeEvery == 0 {
			p := ProbeRestore(m)
			rep.Probed++
			if p.Opened {
				rep.ProbeOpened++
				rep.ProbePages += p.Pages
				rep.ProbeWrong += p.Wrong
				if p.Err != nil && p.Pages > 0 {
					rep.ProbeLeaked++
				}
				if p.Err == nil && err != nil {
					rep.ProbeCompleted = append(rep.ProbeCompleted, fmt.Sprintf("#%d %v", m.Seq, m))
				}
			}
		}
	}
	rep.Seconds = time.Since(t0).Seconds()
	return rep, nil
}

// class names the sentinel error err wraps.
func class(err error) string {
	for _, c := range []struct {
		err  error
		name string
	}{
		{image.ErrNotImage, "not-image"}, {image.ErrVersion, "version"}, {image.ErrIncomplete, "incomplete"},
		{image.ErrInvalidated, "invalidated"}, {image.ErrCorrupt, "corrupt"}, {image.ErrWrongKey, "wrong-key"},
		{image.ErrEncrypted, "encrypted"},
	} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return "other"
}
