package reload

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestWatchFilesFollowsSecretSwaps: files behind a Kubernetes-style
// ..data link: swapping the link calls fn, a write to a neighbour is not
// relevant (it does not start the debounce), and the new version's files
// are followed after the call.
func TestWatchFilesFollowsSecretSwaps(t *testing.T) {
	dir := t.TempDir()
	version := 0
	swap := func() {
		t.Helper()
		version++
		vdir := filepath.Join(dir, "..v"+string(rune('0'+version)))
		if err := os.Mkdir(vdir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"tls.crt", "tls.key"} {
			if err := os.WriteFile(filepath.Join(vdir, n), []byte(n), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(vdir), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	swap()
	for _, n := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	files := []string{filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")}

	type seen struct {
		name     string
		relevant bool
	}
	var mu sync.Mutex
	var events []seen
	eventSeen = func(name string, relevant bool) {
		mu.Lock()
		events = append(events, seen{name, relevant})
		mu.Unlock()
	}
	defer func() { eventSeen = nil }()
	fired := make(chan struct{}, 8)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := WatchFiles(ctx, func() []string { return files }, 50*time.Millisecond, func() { fired <- struct{}{} }); err != nil {
		t.Fatal(err)
	}

	// A neighbour: seen, not relevant, no call.
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the watch seeing the neighbour's write", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) > 0
	})
	mu.Lock()
	if events[0].relevant {
		t.Errorf("neighbour event %+v counted as relevant", events[0])
	}
	mu.Unlock()

	for round := 0; round < 2; round++ {
		swap()
		select {
		case <-fired:
		case <-time.After(20 * time.Second):
			t.Fatalf("swap %d: fn not called", round+1)
		}
	}
	// The version written last is followed: a write to its real file fires.
	if err := os.WriteFile(filepath.Join(dir, "..v3", "tls.crt"), []byte("changed"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fired:
	case <-time.After(20 * time.Second):
		t.Fatal("a write to the current version's file did not call fn")
	}
}
