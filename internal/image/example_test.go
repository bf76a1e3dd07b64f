package image_test

import (
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/khib/khib/internal/image"
)

// A save writes pages in physical order and marks the image complete in
// Close; a restore checks it and walks it in the same order.
func Example() {
	f, err := os.CreateTemp("", "khib-image-*")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()

	// The save (helper B).
	w, err := image.NewWriter(f, 64<<20, image.WriterOptions{
		Codec: "s2",
		Sync:  f.Sync,
		Meta: image.Meta{
			KernelRelease: "6.12.117",
			RAM:           []image.Range{{Start: 0x100000, End: 0x200000}},
			Region:        image.Range{Start: 0x1f000000, End: 0x2f000000},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	pages := make([]byte, 4*image.PageSize) // pfn 0x100 to 0x103
	copy(pages[image.PageSize:], "hello from A")
	if err := w.AddPages(0x100, pages); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	// The restore (helper C).
	st, _ := f.Stat()
	rd, err := image.Open(f, st.Size())
	if err != nil {
		log.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Meta().CheckKernel("6.12.117", ""); err != nil {
		log.Fatal(err)
	}
	if err := rd.Verify(nil); err != nil {
		log.Fatal(err)
	}
	err = rd.Restore(func(pfn uint64, pages []byte, zero bool) error {
		fmt.Printf("pfn %#x: %d pages, zero %v\n", pfn, len(pages)/image.PageSize, zero)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	p, _ := rd.ReadPage(0x101)
	fmt.Printf("%s\n", p[:12])
	// Output:
	// pfn 0x100: 1 pages, zero true
	// pfn 0x101: 1 pages, zero false
	// pfn 0x102: 2 pages, zero true
	// hello from A
}

// After a resume, the image is invalidated so that it is never restored twice.
func ExampleSetState() {
	f, err := os.CreateTemp("", "khib-image-*")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	w, err := image.NewWriter(f, 1<<20, image.WriterOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	if err := image.SetState(f, image.StateInvalidated); err != nil {
		log.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		log.Fatal(err)
	}
	st, _ := f.Stat()
	_, err = image.Open(f, st.Size())
	fmt.Println(errors.Is(err, image.ErrInvalidated))
	// Output: true
}

// A device too small for the image fails the save, with the size needed.
func ExampleTooSmallError() {
	f, err := os.CreateTemp("", "khib-image-*")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	w, err := image.NewWriter(f, 1<<20, image.WriterOptions{Codec: "none"})
	if err != nil {
		log.Fatal(err)
	}
	pages := make([]byte, 512*image.PageSize)
	for i := range pages {
		pages[i] = byte(i*7 + i>>12)
	}
	err = w.AddPages(0, pages)
	if err == nil {
		err = w.Close()
	} else {
		w.Close()
	}
	var ts *image.TooSmallError
	fmt.Println(errors.Is(err, image.ErrTooSmall), errors.As(err, &ts) && ts.Need > ts.Capacity)
	// Output: true true
}
