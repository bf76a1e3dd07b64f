package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/khib/khib/internal/image"
)

func TestAskPassphrase(t *testing.T) {
	key := bytes.Repeat([]byte{1}, image.KeySize)
	unlock := func(pass []byte) ([]byte, error) {
		if string(pass) == "right" {
			return key, nil
		}
		return nil, image.ErrWrongKey
	}
	for _, tc := range []struct {
		name    string
		typed   string // "" types nothing: the prompt times out
		close   bool   // the console ends after typed
		ok      bool
		want    string // in the error
		prompts int
	}{
		{"right at once", "right\n", false, true, "", 1},
		{"carriage return", "right\r", false, true, "", 1},
		{"wrong then right", "wrong\nright\n", false, true, "", 2},
		{"two wrong then right", "a\nb\nright\n", false, true, "", 3},
		{"three wrong", "a\nb\nc\nright\n", false, false, "3 wrong passphrases", 3},
		{"empty lines count as tries", "\n\n\n", false, false, "3 wrong passphrases", 3},
		{"nobody types", "", false, false, "no passphrase was typed", 1},
		{"console closed", "wrong\n", true, false, "reading the passphrase", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			out, err := os.CreateTemp(t.TempDir(), "console")
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			w.WriteString(tc.typed)
			if tc.close {
				w.Close()
			} else {
				defer w.Close()
			}
			got, err := askPassphrase(r, out, "/dev/vda", 3, 300*time.Millisecond, unlock)
			if tc.ok != (err == nil) {
				t.Fatalf("key %x, error %v", got, err)
			}
			if err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
			if tc.ok && !bytes.Equal(got, key) {
				t.Fatal("another key")
			}
			b, _ := os.ReadFile(out.Name())
			if n := strings.Count(string(b), "type its passphrase"); n != tc.prompts {
				t.Errorf("%d prompts, want %d:\n%s", n, tc.prompts, b)
			}
		})
	}
}

func TestReadPassphraseFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want string
		ok                  bool
	}{
		{"line", "secret\n", "secret", true},
		{"no newline", "secret", "secret", true},
		{"crlf", "secret\r\n", "secret", true},
		{"first line only", "secret\nmore\n", "secret", true},
		{"spaces kept", " a b \n", " a b ", true},
		{"empty", "", "", false},
		{"empty line", "\nsecret\n", "", false},
		{"too long", strings.Repeat("x", maxPassphrase+1), "", false},
		{"longest", strings.Repeat("x", maxPassphrase), strings.Repeat("x", maxPassphrase), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readPassphraseFile(p)
			if tc.ok != (err == nil) || string(got) != tc.want {
				t.Fatalf("readPassphraseFile = %q, %v", got, err)
			}
		})
	}
	if _, err := readPassphraseFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file gave a passphrase")
	}
}

func TestSaveEncryption(t *testing.T) {
	slot, err := image.NewPassphraseSlot(bytes.Repeat([]byte{2}, image.KeySize), []byte("p"), image.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{2}, image.KeySize)
	enc := &image.Superblock{Cipher: image.CipherAES256GCM, Slots: []image.KeySlot{slot}}
	plain := &image.Superblock{}
	for _, tc := range []struct {
		name    string
		rsv     *image.Superblock
		key     []byte
		encrypt bool
		ok      bool
	}{
		{"clear", plain, nil, false, true},
		{"encrypted", enc, key, true, true},
		{"encrypted without key", enc, nil, false, false},
		{"key without encryption", plain, key, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := saveEncryption(tc.rsv, tc.key)
			if tc.ok != (err == nil) || tc.encrypt != (e != nil) {
				t.Fatalf("saveEncryption = %v, %v", e, err)
			}
		})
	}
}

func TestMemAvailable(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		want          uint64
		ok            bool
	}{
		{"usual", "MemTotal:        1000 kB\nMemFree:          500 kB\nMemAvailable:     800 kB\n", 800 << 10, true},
		{"missing", "MemTotal: 1000 kB\n", 0, false},
		{"garbage", "MemAvailable: lots\n", 0, false},
	} {
		p := filepath.Join(dir, tc.name)
		os.WriteFile(p, []byte(tc.content), 0o644)
		got, err := memAvailable(p)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("%s: %d, %v", tc.name, got, err)
		}
	}
}

func TestNewSaveKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(p, []byte("hunter2\n"), 0o600)
	params := image.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}
	k, err := newSaveKey(keyOptions{PassFile: p, Passphrase: true, Argon2: params})
	if err != nil {
		t.Fatal(err)
	}
	sb := &image.Superblock{Cipher: image.CipherAES256GCM, Slots: k.slots}
	got, err := image.UnlockPassphrase(sb, []byte("hunter2"))
	if err != nil || !bytes.Equal(got, k.key) {
		t.Fatalf("the slot does not open with the passphrase: %v", err)
	}
	if _, err := image.UnlockPassphrase(sb, []byte("hunter3")); !errors.Is(err, image.ErrWrongKey) {
		t.Fatalf("another passphrase: %v", err)
	}
	k2, _ := newSaveKey(keyOptions{PassFile: p, Passphrase: true, Argon2: params})
	if bytes.Equal(k.key, k2.key) {
		t.Fatal("two saves drew the same key")
	}
	k.wipe()
	if !bytes.Equal(k.key, make([]byte, image.KeySize)) {
		t.Fatal("wipe left the key")
	}
}

func TestParseArgon2(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want image.Argon2Params
		ok   bool
	}{
		{"3,64,4", image.DefaultArgon2, true},
		{"1,1,1", image.Argon2Params{Time: 1, MemoryKiB: 1024, Threads: 1}, true},
		{"1,1024,16", image.Argon2Params{Time: 1, MemoryKiB: 1 << 20, Threads: 16}, true},
		{"1,1025,1", image.Argon2Params{}, false},
		{"0,64,4", image.Argon2Params{}, false},
		{"3,64,0", image.Argon2Params{}, false},
		{"3,64,17", image.Argon2Params{}, false},
		{"3,64,300", image.Argon2Params{}, false},
		{"3,64", image.Argon2Params{}, false},
		{"a,b,c", image.Argon2Params{}, false},
		{"", image.Argon2Params{}, false},
	} {
		got, err := parseArgon2(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("parseArgon2(%q) = %v, %v", tc.in, got, err)
		}
	}
}

// khib image on an encrypted image: inspect shows the header only without
// the passphrase, everything with it; verify needs it and refuses a wrong
// one; a flipped byte fails verify.
func TestImageCommandEncrypted(t *testing.T) {
	bin := buildKhib(t)
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	os.WriteFile(pass, []byte("open sesame\n"), 0o600)
	wrong := filepath.Join(dir, "wrong")
	os.WriteFile(wrong, []byte("open sesame!\n"), 0o600)
	k, err := newSaveKey(keyOptions{PassFile: pass, Passphrase: true, Argon2: image.Argon2Params{Time: 1, MemoryKiB: 256, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(dir, "image")
	f, err := os.Create(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	w, err := image.NewWriter(f, 64<<20, image.WriterOptions{
		Meta:       image.Meta{KernelRelease: "6.12.99-secret-kernel", RAM: []image.Range{{Start: 0x100000, End: 0x200000}}, Region: image.Range{Start: 0x1f000000, End: 0x2f000000}, JumpBack: 0x1f000100},
		Encryption: &image.Encryption{Key: k.key, Slots: k.slots},
	})
	if err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte("A's secret memory "), 300)[:image.PageSize]
	if err := w.AddPages(0x100, page); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		has    []string
		hasNot []string
	}{
		{"inspect, header only", []string{"image", "inspect", imgPath}, 0,
			[]string{"format version 2", "aes-256-gcm", "passphrase (argon2id t=1", "sealed"}, []string{"6.12.99-secret-kernel"}},
		{"inspect --json, header only", []string{"image", "inspect", "--json", imgPath}, 0,
			[]string{`"encrypted":true`, `"cipher":"aes-256-gcm"`, `"image_bytes":`}, []string{"secret-kernel"}},
		{"inspect with the passphrase", []string{"image", "inspect", "--passphrase-file", pass, imgPath}, 0,
			[]string{"6.12.99-secret-kernel", "aes-256-gcm"}, nil},
		{"verify", []string{"image", "verify", "--passphrase-file", pass, imgPath}, 0, []string{"is intact"}, nil},
		{"verify, wrong passphrase", []string{"image", "verify", "--passphrase-file", wrong, imgPath}, 1, []string{"wrong key"}, nil},
		{"verify --json, wrong passphrase", []string{"image", "verify", "--json", "--passphrase-file", wrong, imgPath}, 1, []string{`"ok":false`}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, nil, bin, tc.args...)
			all := out + errOut
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, all)
			}
			for _, s := range tc.has {
				if !strings.Contains(all, s) {
					t.Errorf("output lacks %q:\n%s", s, all)
				}
			}
			for _, s := range tc.hasNot {
				if strings.Contains(all, s) {
					t.Errorf("output shows %q:\n%s", s, all)
				}
			}
		})
	}
	b, _ := os.ReadFile(imgPath)
	if bytes.Contains(b, []byte("secret")) {
		t.Fatal("the image holds plaintext")
	}
	b[image.SuperblockSize+40] ^= 1 // in chunk 0's payload
	os.WriteFile(imgPath, b, 0o600)
	if code, out, errOut := run(t, nil, bin, "image", "verify", "--passphrase-file", pass, imgPath); code != 1 || !strings.Contains(out+errOut, "chunk 0") {
		t.Fatalf("verify of a flipped chunk: exit %d\n%s%s", code, out, errOut)
	}
}
