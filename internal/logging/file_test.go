package logging

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFileReopen: after the file is moved away, writes go on into it
// until Reopen, then into a new file at the path.
func TestFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write([]byte("one\n"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("two\n"))
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("three\n"))
	for name, want := range map[string]string{path + ".1": "one\ntwo\n", path: "three\n"} {
		got, err := os.ReadFile(name)
		if err != nil || string(got) != want {
			t.Errorf("%s: %q %v, want %q", name, got, err, want)
		}
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	os.Rename(path, path+".2")
	if os.Geteuid() != 0 { // root may create files anywhere
		if err := f.Reopen(); err == nil {
			t.Fatal("Reopen in a read-only directory succeeded")
		}
		f.Write([]byte("four\n")) // the old file stays in use
		if got, _ := os.ReadFile(path + ".2"); string(got) != "three\nfour\n" {
			t.Errorf("after a failed reopen: %q", got)
		}
	}
}
