package objstore

import (
	"bytes"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

func TestUsedMarker(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := testCtx(t)
	s.put(s.loc.Key, []byte("image one"))

	if uuid, found, err := UsedMarker(ctx, s.loc, s.creds); err != nil || found || uuid != "" {
		t.Fatalf("UsedMarker before MarkUsed = %q, %v, %v", uuid, found, err)
	}
	const uuid1 = "0b7e4c1c-6c4f-4a55-9c1e-2f1d3e0e8a11"
	if err := MarkUsed(ctx, s.loc, s.creds, uuid1); err != nil {
		t.Fatal(err)
	}
	if uuid, found, err := UsedMarker(ctx, s.loc, s.creds); err != nil || !found || uuid != uuid1 {
		t.Fatalf("UsedMarker = %q, %v, %v; want %s", uuid, found, err, uuid1)
	}
	if !s.exists(s.loc.Key + ".used") {
		t.Fatal("no KEY.used object")
	}
	if got := s.readAll(s.loc); !bytes.Equal(got, []byte("image one")) {
		t.Fatal("MarkUsed changed the image")
	}

	for _, bad := range []string{"", "a b", strings.Repeat("x", 65), "a\nb"} {
		if err := MarkUsed(ctx, s.loc, s.creds, bad); err == nil {
			t.Errorf("MarkUsed(%q) succeeded", bad)
		}
	}

	// A new save that fails keeps the marker, so the old image stays
	// refused.
	up, err := Create(ctx, s.loc, s.creds, Options{})
	if err != nil {
		t.Fatal(err)
	}
	up.WriteAt([]byte("image two"), 0)
	if err := up.Abort(); err != nil {
		t.Fatal(err)
	}
	if uuid, found, _ := UsedMarker(ctx, s.loc, s.creds); !found || uuid != uuid1 {
		t.Fatalf("an aborted save removed the marker (%q, %v)", uuid, found)
	}

	// A new save that succeeds removes it.
	s.put(s.loc.Key, []byte("image two"))
	if uuid, found, err := UsedMarker(ctx, s.loc, s.creds); err != nil || found {
		t.Fatalf("UsedMarker after a new save = %q, %v, %v", uuid, found, err)
	}
}

func TestUsedMarkerMalformed(t *testing.T) {
	s := newTestStore(t, nil)
	s.put(s.loc.UsedKey(), []byte("not a marker\n"))
	_, found, err := UsedMarker(testCtx(t), s.loc, s.creds)
	if err == nil || found || !strings.Contains(err.Error(), "without a uuid line") {
		t.Fatalf("UsedMarker of a malformed marker: %v, %v", found, err)
	}
	oneLineErr(t, err)
	for _, tt := range []struct {
		in   string
		want string
	}{
		{"uuid abc\nused 2026-01-01T00:00:00Z\n", "abc"},
		{"used x\nuuid def", "def"},
	} {
		if got, err := parseMarker([]byte(tt.in)); err != nil || got != tt.want {
			t.Errorf("parseMarker(%q) = %q, %v", tt.in, got, err)
		}
	}
	if _, err := parseMarker(make([]byte, maxMarker+1)); err == nil {
		t.Error("a huge marker was taken")
	}
}

// The marker stays when its removal fails after a new save, and Close
// still succeeds: the marker names the old image only.
func TestStaleMarkerRemovalFails(t *testing.T) {
	var armed atomic.Bool
	s := newTestStore(t, failDeletes(&armed))
	ctx := testCtx(t)
	if err := MarkUsed(ctx, s.loc, s.creds, "old-uuid"); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	var logged []string
	up, err := Create(ctx, s.loc, s.creds, Options{Attempts: 1, Logf: func(f string, a ...any) {
		logged = append(logged, f)
	}})
	if err != nil {
		t.Fatal(err)
	}
	up.WriteAt([]byte("new image"), 0)
	if err := up.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if len(logged) != 1 {
		t.Errorf("Logf told %d times, want once", len(logged))
	}
	if uuid, found, _ := UsedMarker(ctx, s.loc, s.creds); !found || uuid != "old-uuid" {
		t.Fatalf("marker %q, %v", uuid, found)
	}
}

func TestDelete(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := testCtx(t)
	s.put(s.loc.Key, []byte("image"))
	if err := MarkUsed(ctx, s.loc, s.creds, "u1"); err != nil {
		t.Fatal(err)
	}
	// An upload left unfinished (a save that died).
	up, err := Create(ctx, s.loc, s.creds, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = up
	other := s.location("images/host-a.img2")
	s.put(other.Key, []byte("another image"))

	if err := Delete(ctx, s.loc, s.creds); err != nil {
		t.Fatal(err)
	}
	if s.exists(s.loc.Key) || s.exists(s.loc.UsedKey()) {
		t.Fatal("Delete left the image or its marker")
	}
	if n := s.uploads(s.loc.Key); n != 0 {
		t.Fatalf("Delete left %d unfinished uploads", n)
	}
	if !s.exists(other.Key) {
		t.Fatal("Delete removed another image")
	}
	if err := Delete(ctx, s.loc, s.creds); err != nil {
		t.Fatalf("Delete of nothing: %v", err)
	}
}

// failDeletes makes the store answer 503 to every DELETE while armed.
func failDeletes(armed *atomic.Bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && r.Method == http.MethodDelete && !r.URL.Query().Has("uploadId") {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
