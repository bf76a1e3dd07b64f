package tpmkey

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// swtpm starts a software TPM (swtpm, apt-get install swtpm) with its
// state in dir and returns a connection to it. Tests that need a TPM skip
// without swtpm, and say so.
func swtpm(t *testing.T, dir string) transport.TPMCloser {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("needs swtpm (apt-get install swtpm swtpm-tools) to stand in for a TPM 2.0")
	}
	sock := filepath.Join(dir, "server.sock")
	cmd := exec.Command(bin, "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+filepath.Join(dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting swtpm: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var conn net.Conn
	for i := 0; i < 100; i++ {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("connecting to swtpm: %v (%s)", err, stderr.String())
	}
	tpm := transport.FromReadWriteCloser(conn)
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

func TestSealUnseal(t *testing.T) {
	dir := t.TempDir()
	tpm := swtpm(t, dir)
	key := bytes.Repeat([]byte{0x5e}, 32)
	pcrs := []int{0, 2, 16}
	s, err := Seal(tpm, key, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.PCRList(); len(got) != 3 || got[2] != 16 {
		t.Fatalf("PCRs %v", got)
	}
	// Through its encoding, as an image keeps it.
	s2, err := Parse(s.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.Unseal(tpm)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Unseal = %x, %v", got, err)
	}
	if bytes.Contains(s.Marshal(), key) {
		t.Fatal("the slot holds the key in clear")
	}
	// Another boot chain: a bound PCR moves on.
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(16), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)}}},
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Unseal(tpm); !errors.Is(err, ErrPolicy) {
		t.Fatalf("Unseal after PCR 16 changed: %v, want ErrPolicy", err)
	}
	// A PCR it is not bound to does not matter.
	s3, err := Seal(tpm, key, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(16), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)}}},
	}.Execute(tpm)
	if got, err := s3.Unseal(tpm); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Unseal of a key bound to PCR 0 after PCR 16 changed: %v", err)
	}
	vals, err := ReadPCRs(tpm, []int{0, 16})
	if err != nil || len(vals[16]) != 32 {
		t.Fatalf("ReadPCRs = %x, %v", vals, err)
	}
	// An altered object does not load.
	bad := *s3
	bad.Private = bytes.Clone(s3.Private)
	bad.Private[len(bad.Private)-1] ^= 1
	if _, err := bad.Unseal(tpm); err == nil || errors.Is(err, ErrPolicy) {
		t.Fatalf("Unseal of an altered object: %v", err)
	}
}

// A key sealed by one TPM does not unseal on another: the disk moved to
// another machine.
func TestOtherTPM(t *testing.T) {
	a := swtpm(t, t.TempDir())
	s, err := Seal(a, []byte("0123456789abcdef0123456789abcdef"), []int{0})
	if err != nil {
		t.Fatal(err)
	}
	b := swtpm(t, t.TempDir())
	if _, err := s.Unseal(b); err == nil {
		t.Fatal("another TPM unsealed the key")
	} else if !strings.Contains(err.Error(), "another TPM") {
		t.Fatalf("error %v", err)
	}
}

func TestParse(t *testing.T) {
	good := (&Slot{Bank: uint16(tpm2.TPMAlgSHA256), PCRs: 1<<0 | 1<<7, Public: []byte{1, 2, 3}, Private: []byte{4, 5}}).Marshal()
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"good", good, ""},
		{"empty", nil, "too short"},
		{"sha1 bank", append([]byte{4, 0}, good[2:]...), "PCR bank"},
		{"no PCRs", append(append([]byte{}, good[:2]...), append([]byte{0, 0, 0, 0}, good[6:]...)...), "PCR mask"},
		{"PCR 24", append(append([]byte{}, good[:2]...), append([]byte{0, 0, 0, 1}, good[6:]...)...), "PCR mask"},
		{"truncated", good[:len(good)-1], "left"},
		{"trailing", append(bytes.Clone(good), 0), "after"},
		{"zero length", append(append([]byte{}, good[:6]...), 0, 0), "of 0 bytes"},
		{"no private", good[:11], "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(tc.b)
			if tc.want == "" {
				if err != nil || !bytes.Equal(s.Marshal(), tc.b) {
					t.Fatalf("Parse = %+v, %v", s, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParsePCRs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"0,2,4,7", []int{0, 2, 4, 7}},
		{"7, 0,0", []int{0, 7}},
		{"23", []int{23}},
		{"24", nil},
		{"-1", nil},
		{"", nil},
		{"a", nil},
	} {
		got, err := ParsePCRs(tc.in)
		if (tc.want == nil) != (err != nil) || len(got) != len(tc.want) {
			t.Errorf("ParsePCRs(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add((&Slot{Bank: uint16(tpm2.TPMAlgSHA256), PCRs: 0x95, Public: []byte{1}, Private: []byte{2}}).Marshal())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		if !bytes.Equal(s.Marshal(), b) {
			t.Fatal("a parsed slot encodes differently")
		}
		if len(s.PCRList()) == 0 {
			t.Fatal("a parsed slot binds no PCR")
		}
	})
}

func TestOpenWithoutTPM(t *testing.T) {
	old := Devices
	defer func() { Devices = old }()
	Devices = []string{filepath.Join(t.TempDir(), "tpmrm0")}
	if _, err := Open(); !errors.Is(err, ErrNoTPM) {
		t.Fatalf("Open without a device: %v", err)
	}
	f := filepath.Join(t.TempDir(), "notadevice")
	os.WriteFile(f, nil, 0o600)
	Devices = []string{f}
	if _, err := Open(); err == nil {
		t.Fatal("Open of a plain file")
	}
}

// A slot cannot be forged: a sealed object made under any other parent
// (here the plain SRK, with the right policy digest) does not load, and
// the PCR-bound parent takes no child while the PCRs differ, even from
// code that knows the digest they must have.
func TestForgedSlot(t *testing.T) {
	tpm := swtpm(t, t.TempDir())
	pcrs := []int{16}
	evil := bytes.Repeat([]byte{0xee}, 32)
	digest, err := policyDigest(tpm, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: evil}),
		}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true},
			AuthPolicy:       tpm2.TPM2BDigest{Buffer: digest},
		}),
	}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(tpm)
	forged := &Slot{Bank: uint16(tpm2.TPMAlgSHA256), PCRs: 1 << 16, Public: obj.OutPublic.Bytes(), Private: obj.OutPrivate.Buffer}
	if key, err := forged.Unseal(tpm); err == nil {
		t.Fatalf("a slot sealed under another parent unsealed: %x", key)
	}
	// Elsewhere (PCR 16 moved on), the parent for the old digest is
	// easily made, but takes no child.
	extend16(t, tpm)
	p, flush, err := parent(tpm, digest)
	if err != nil {
		t.Fatal(err)
	}
	defer flush()
	sess, closeSess, err := pcrSession(tpm, pcrs, p)
	if err != nil {
		t.Fatal(err)
	}
	defer closeSess()
	_, err = tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: p.ObjectHandle, Name: p.Name, Auth: sess},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: evil}),
		}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true},
			AuthPolicy:       tpm2.TPM2BDigest{Buffer: digest},
		}),
	}.Execute(tpm)
	if !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("Create under the PCR-bound parent with other PCRs: %v, want a policy failure", err)
	}
}

func extend16(t *testing.T, tpm transport.TPM) {
	t.Helper()
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(16), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)}}},
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
}
